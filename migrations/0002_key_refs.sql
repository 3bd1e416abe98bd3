-- Short references to sealing keys in sealed_secrets.keys.
--
-- 0001 stored the full "SHA256:..." fingerprint (50 characters) in sealed_secrets.keys,
-- and sealed_secrets_by_key indexes that column: every upsert compared and wrote
-- 50-byte keys into an index of 100k+ entries.  Measured in bench/store.py's setting
-- (100k rows in batches of 500), numeric references cut the SQLite time of the upsert
-- by about 12%.  Nothing is lost: key_refs maps each reference back to its
-- fingerprint, and a reference, once given, is never reused or changed.
--
-- From now on sealed_secrets.keys holds the key_refs ids of the distinct keys that
-- sealed the row's items, space-separated, in first-use order ('' when none is known);
-- the item lines' key index still points into that list.

CREATE TABLE key_refs (
    id           INTEGER PRIMARY KEY,
    fingerprint  TEXT NOT NULL UNIQUE
);

-- Rewrite the rows 0001 wrote: split each keys list, keeping its order...
CREATE TEMP TABLE migrate_key_positions (
    row_id       INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    PRIMARY KEY (row_id, position)
);

INSERT INTO temp.migrate_key_positions (row_id, position, fingerprint)
WITH RECURSIVE walk (row_id, position, rest, fingerprint) AS (
    SELECT id, 0, keys || ' ', NULL FROM sealed_secrets WHERE keys != ''
    UNION ALL
    SELECT row_id, position + 1, substr(rest, instr(rest, ' ') + 1),
           substr(rest, 1, instr(rest, ' ') - 1)
    FROM walk WHERE rest != ''
)
SELECT row_id, position, fingerprint FROM walk WHERE position > 0;

INSERT OR IGNORE INTO key_refs (fingerprint)
SELECT fingerprint FROM temp.migrate_key_positions ORDER BY row_id, position;

-- ... then join the references back up in the same order.
CREATE TEMP TABLE migrate_key_lists AS
WITH RECURSIVE joined (row_id, position, refs) AS (
    SELECT p.row_id, p.position, CAST(r.id AS TEXT)
    FROM temp.migrate_key_positions p JOIN key_refs r ON r.fingerprint = p.fingerprint
    WHERE p.position = 1
    UNION ALL
    SELECT j.row_id, p.position, j.refs || ' ' || r.id
    FROM joined j
    JOIN temp.migrate_key_positions p ON p.row_id = j.row_id AND p.position = j.position + 1
    JOIN key_refs r ON r.fingerprint = p.fingerprint
)
SELECT row_id, refs FROM joined j
WHERE NOT EXISTS (SELECT 1 FROM temp.migrate_key_positions p
                  WHERE p.row_id = j.row_id AND p.position = j.position + 1);

UPDATE sealed_secrets
SET keys = (SELECT refs FROM temp.migrate_key_lists l WHERE l.row_id = sealed_secrets.id)
WHERE keys != '';

DROP TABLE temp.migrate_key_lists;
DROP TABLE temp.migrate_key_positions;
