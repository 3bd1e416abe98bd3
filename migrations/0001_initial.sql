-- sealfleet inventory, first schema.
--
-- Applied by sealfleet.adapters.store.migrations inside ONE transaction together with
-- its schema_migrations record: never put BEGIN/COMMIT in a migration, and never edit
-- a migration once released (its SHA-256 is checked at every start); add 0002_... instead.
--
-- Times are ISO 8601 UTC text with microseconds ("2026-01-02T03:04:05.000000+00:00"),
-- so text comparison is time comparison.  Keys are referred to by the controller's
-- "SHA256:..." fingerprint everywhere.

-- Clusters of the fleet, as configured, with the outcome of their last scan.
CREATE TABLE clusters (
    name                  TEXT PRIMARY KEY,
    server                TEXT,
    controller_namespace  TEXT NOT NULL DEFAULT 'kube-system',
    controller_name       TEXT NOT NULL DEFAULT 'sealed-secrets-controller',
    reachable             INTEGER,              -- NULL = never scanned
    last_error            TEXT,
    last_scan_at          TEXT,
    scan_duration_ms      INTEGER,
    sealing_key           TEXT,                 -- fingerprint the controller seals with now
    sealing_key_source    TEXT CHECK (sealing_key_source IN ('cert.pem', 'newest-active')),
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    removed_at            TEXT                  -- set when dropped from the config; rows kept
) WITHOUT ROWID;

-- Every sealing key the fleet knows.  The private key, when known, is stored only as
-- AES-256-GCM ciphertext under the key-encryption key identified by kek_id
-- (AAD = fingerprint), never in plaintext.
CREATE TABLE sealing_keys (
    fingerprint            TEXT PRIMARY KEY,
    not_before             TEXT NOT NULL,
    not_after              TEXT NOT NULL,
    source                 TEXT NOT NULL,       -- cluster | generated | imported | cert-only
    state                  TEXT NOT NULL DEFAULT 'active'
                           CHECK (state IN ('active', 'retired', 'compromised')),
    state_reason           TEXT,
    state_changed_at       TEXT,
    fleet_master           INTEGER NOT NULL DEFAULT 0 CHECK (fleet_master IN (0, 1)),
    certificate_pem        TEXT,
    private_key_ciphertext BLOB,                -- nonce(12) || AES-GCM ciphertext+tag
    kek_id                 TEXT,                -- which KEK encrypted it (hash prefix)
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    CHECK ((private_key_ciphertext IS NULL) = (kek_id IS NULL))
) WITHOUT ROWID;
CREATE INDEX sealing_keys_by_state ON sealing_keys (state);

-- The configured fleet master key set (it may name keys not observed yet); the
-- fleet_master flag above is kept in step with it.
CREATE TABLE fleet_master_keys (
    fingerprint  TEXT PRIMARY KEY
) WITHOUT ROWID;

-- Which key Secrets each cluster holds now (replaced wholesale on every observation).
CREATE TABLE cluster_keys (
    cluster             TEXT NOT NULL REFERENCES clusters (name),
    secret_name         TEXT NOT NULL,
    fingerprint         TEXT NOT NULL,
    label_value         TEXT,                   -- NULL = legacy key Secret found by name only
    resource_version    TEXT NOT NULL,
    creation_timestamp  TEXT,
    observed_at         TEXT NOT NULL,
    PRIMARY KEY (cluster, secret_name)
) WITHOUT ROWID;
CREATE INDEX cluster_keys_by_key ON cluster_keys (fingerprint, cluster);

-- SealedSecrets as last observed.  Per-item attribution is stored compactly in the row
-- itself (measured in bench/store.py: a trigger-maintained link table with one row per
-- (secret, key) made inserts ~2.8 times slower; an index on a key column costs ~10%):
--   items     = one line per item, "name<TAB>item_hash<TAB>k", k = index into `keys`
--               or "-" when no known key opens it (JSON [[name, hash, fp], ...] when a
--               name cannot be written that way);
--   keys      = the distinct fingerprints that sealed its items, space-separated, in
--               first-use order ('' when none is known); almost always exactly one, so
--               "secrets sealed with key K" is an index lookup on keys = K, plus the few
--               multi-key rows found by scanning the (small, covering) keys index;
--   key_items = how many items a known key opens (= items sealed by K when keys = K).
CREATE TABLE sealed_secrets (
    id                      INTEGER PRIMARY KEY,
    cluster                 TEXT NOT NULL REFERENCES clusters (name),
    namespace               TEXT NOT NULL,
    name                    TEXT NOT NULL,
    uid                     TEXT NOT NULL,
    resource_version        TEXT NOT NULL,
    generation              INTEGER NOT NULL,
    scope                   INTEGER NOT NULL CHECK (scope BETWEEN 0 AND 2),
    item_count              INTEGER NOT NULL,
    ciphertext_fingerprint  TEXT NOT NULL,      -- SHA-256 over the sorted encryptedData
    items                   TEXT NOT NULL,
    keys                    TEXT NOT NULL,
    key_items               INTEGER NOT NULL,
    -- CHECKs on this hot table avoid IN (...): SQLite builds an ephemeral index for an
    -- IN list on every execution, which measured ~40% of the whole upsert's CPU time.
    state                   TEXT NOT NULL
                            CHECK (state = 'current' OR state = 'stale' OR state = 'unknown'
                                   OR state = 'compromised' OR state = 'failing'),
    state_changed_at        TEXT NOT NULL,
    synced                  INTEGER CHECK (synced = 0 OR synced = 1),  -- NULL = not reported
    synced_message          TEXT,
    malformed_reason        TEXT,
    first_seen              TEXT NOT NULL,
    last_seen               TEXT NOT NULL,
    UNIQUE (cluster, namespace, name)
);
-- Serves state counts (covering) and state-filtered keyset pages in (cluster, ns, name) order.
CREATE INDEX sealed_secrets_by_state ON sealed_secrets (state, cluster, namespace, name);
-- Serves per-key usage (covering) and "which secrets use key K".
CREATE INDEX sealed_secrets_by_key ON sealed_secrets (keys, key_items);

-- Attribution cache: which key opens an item (by its ciphertext hash).  NULL = no key
-- known at known_keys_epoch opened it; retried once the epoch moves on.
CREATE TABLE attributions (
    item_hash         TEXT PRIMARY KEY,
    fingerprint       TEXT,
    known_keys_epoch  INTEGER NOT NULL,
    attributed_at     TEXT NOT NULL
) WITHOUT ROWID;

-- Where each cluster's watches stand, so a restart resumes instead of relisting.
CREATE TABLE watch_resource_versions (
    cluster           TEXT NOT NULL,
    resource          TEXT NOT NULL,
    resource_version  TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (cluster, resource)
) WITHOUT ROWID;

-- Append-only audit log: the triggers below make UPDATE and DELETE fail.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    event    TEXT NOT NULL,
    actor    TEXT NOT NULL,
    details  TEXT NOT NULL                      -- JSON object; never secrets
);
CREATE INDEX audit_log_by_event ON audit_log (event, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Jobs (renewal, sync, reseal) with per-object progress, so an interrupted job resumes
-- where it stopped instead of redoing finished objects.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    params      TEXT NOT NULL DEFAULT '{}',     -- JSON
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX jobs_by_state ON jobs (state, created_at);

CREATE TABLE job_items (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    ref         TEXT NOT NULL,                  -- object reference, e.g. "cluster/namespace/name"
    state       TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    attempt     INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (job_id, ref)
) WITHOUT ROWID;
CREATE INDEX job_items_by_state ON job_items (job_id, state);
