-- Private key material taken out of the keystore because it contradicts its own row.
--
-- A key Secret whose tls.crt and tls.key belonged to different keys was once stored
-- as it came: the row of one fingerprint holding another key's private key, or a
-- certificate that is not the private key's.  SQL cannot see that (the material is
-- encrypted), so the store checks every stored key when it opens with the KEK and
-- moves such material here, in one transaction with an audit_log entry: the key's
-- row keeps its public facts but no longer claims a private key (and loses the
-- certificate if that was the part that did not belong).  The ciphertext is kept,
-- still under the KEK it names, for an operator to inspect; nothing here is loaded.

CREATE TABLE quarantined_key_material (
    id                      INTEGER PRIMARY KEY,
    fingerprint             TEXT NOT NULL,          -- the sealing_keys row it was in
    reason                  TEXT NOT NULL,          -- what did not match; no key material
    private_key_ciphertext  BLOB NOT NULL,          -- as it was: AAD = fingerprint
    kek_id                  TEXT NOT NULL,
    certificate_pem         TEXT,                   -- the row's certificate at the time
    quarantined_at          TEXT NOT NULL
);
CREATE INDEX quarantined_key_material_by_key ON quarantined_key_material (fingerprint);
