-- The key-encryption key this database's private keys are stored under.
--
-- Before this, a copy of the database opened with another KEK looked healthy until a
-- stored key was first needed.  The store now writes this one row the first time it
-- opens the database with a KEK (or finds the KEK id its key rows already name), and
-- from then on refuses, at open, any KEK that does not decrypt check_value.  A store
-- opened without a KEK (read-only CLI commands) neither reads nor writes it.

CREATE TABLE kek_verifier (
    id           INTEGER PRIMARY KEY CHECK (id = 1),   -- one row at most
    kek_id       TEXT NOT NULL,                        -- hash prefix of the KEK, not the KEK
    check_value  BLOB NOT NULL,    -- nonce(12) || AES-GCM(KEK, constant), fixed AAD
    created_at   TEXT NOT NULL
);
