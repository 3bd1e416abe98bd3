-- What keeps a reachable cluster from being healthy, so that the report can say it:
--
-- * clusters.controller_error: why the sealed-secrets controller cannot be asked (no
--   ready replica, crash loop, no Service); NULL when it answers.  Until now such a
--   cluster showed reachable with no error, and only its sealing key's source changed.
-- * malformed_key_secrets: key Secrets in the controller namespace that are not keys
--   (unparseable, or a tls.crt that belongs to another key than tls.key), with the
--   reason; never taken as keys.  Replaced wholesale with each observation, like
--   cluster_keys.

ALTER TABLE clusters ADD COLUMN controller_error TEXT;

CREATE TABLE malformed_key_secrets (
    cluster      TEXT NOT NULL REFERENCES clusters (name),
    secret_name  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    observed_at  TEXT NOT NULL,
    PRIMARY KEY (cluster, secret_name)
) WITHOUT ROWID;
