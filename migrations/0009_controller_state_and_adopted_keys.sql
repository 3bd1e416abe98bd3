-- Two facts the key lifecycle needs as data, not as text:
--
-- * clusters.controller_state: what the controller probe found (serving,
--   no_ready_replicas, not_installed, not_serving; NULL until probed).  The crash-loop
--   metric, the report and the status page read it instead of matching the wording of
--   controller_error, which stays as the human-readable reason.  Existing rows are
--   filled from that wording once, here; the next probe overwrites them.
-- * clusters.controller_key_renew_seconds: the controller's --key-renew-period (0: off;
--   NULL: not known), read from its Deployment by the probe: a self-renewing controller
--   is reported as drift (controller_self_renewal) between syncs too.
-- * adopted_keys: which cluster each key was adopted from (`sealfleet keys adopt`), so a
--   key sync writes an adopted key back to that cluster if it loses its key Secret,
--   and to no other cluster unless the key was shared into the master set.

ALTER TABLE clusters ADD COLUMN controller_state TEXT
    CHECK (controller_state IN ('serving', 'no_ready_replicas', 'not_installed',
                                'not_serving'));
ALTER TABLE clusters ADD COLUMN controller_key_renew_seconds INTEGER;

UPDATE clusters SET controller_state = CASE
    WHEN controller_error IS NULL AND sealing_key_source = 'cert.pem' THEN 'serving'
    WHEN controller_error IS NULL THEN NULL
    WHEN controller_error LIKE '%has no ready replicas%'
         OR controller_error LIKE '%no endpoints available%' THEN 'no_ready_replicas'
    WHEN controller_error LIKE '%not found%' THEN 'not_installed'
    ELSE 'not_serving' END;

CREATE TABLE adopted_keys (
    cluster      TEXT NOT NULL REFERENCES clusters (name),
    fingerprint  TEXT NOT NULL REFERENCES sealing_keys (fingerprint),
    adopted_at   TEXT NOT NULL,
    job_id       TEXT,
    PRIMARY KEY (cluster, fingerprint)
) WITHOUT ROWID;

-- Adoptions journaled before this migration: their steps say what they adopted.
INSERT OR IGNORE INTO adopted_keys (cluster, fingerprint, adopted_at, job_id)
SELECT substr(item.ref, length('adopt:') + 1), adopted.value, item.updated_at, item.job_id
FROM job_items AS item, json_each(item.detail, '$.adopted') AS adopted
WHERE item.ref LIKE 'adopt:%' AND item.state = 'done'
  AND substr(item.ref, length('adopt:') + 1) IN (SELECT name FROM clusters)
  AND adopted.value IN (SELECT fingerprint FROM sealing_keys);
