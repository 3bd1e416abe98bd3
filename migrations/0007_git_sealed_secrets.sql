-- SealedSecrets in GitOps working trees (the configured [[repos]]), and what links the
-- in-cluster objects to them.  Like the rest of the inventory, a cache: rebuildable by
-- scanning the trees again.
--
-- * git_repos: each configured working tree with the outcome of its last scan.
-- * git_files: every file of a tree that matched the repo's `paths`, with the signature
--   that says whether it changed since it was parsed (so an unchanged file is never
--   read twice) and, for a file that does not parse, why (the file is then skipped).
-- * git_sealed_secrets: the SealedSecret documents of those files, one row per
--   (repo, path, document), document being the 0-based index among the file's
--   non-empty documents (documents.parse_documents' order).  Items use the layout of
--   sealed_secrets.items/keys/key_items (migrations 0001 and 0002: key references).
--   `clusters` names the configured clusters whose keys should open the document
--   (space-separated, in config order); the state is judged against them.
-- * sealed_secrets gains the GitOps tool that manages an object (Flux's
--   kustomize.toolkit.fluxcd.io/name label, Argo CD's tracking-id annotation, or only
--   the app.kubernetes.io/instance label as a hint).  Rows observed before this
--   migration lack it: their resource_version is cleared and the watch positions are
--   forgotten, so the next start lists every cluster once and records it (attribution
--   is cached, so that costs no RSA).

CREATE TABLE git_repos (
    name              TEXT PRIMARY KEY,
    path              TEXT NOT NULL,
    is_git            INTEGER CHECK (is_git = 0 OR is_git = 1),   -- NULL = never scanned
    head_commit       TEXT,                 -- HEAD at the last scan (NULL: not a git tree)
    head_branch       TEXT,                 -- the checked-out branch (NULL: detached or none)
    last_scan_at      TEXT,
    last_error        TEXT,                 -- why the last scan failed or was skipped
    scan_duration_ms  INTEGER,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    removed_at        TEXT                  -- set when dropped from the config; rows kept
) WITHOUT ROWID;

CREATE TABLE git_files (
    repo          TEXT NOT NULL REFERENCES git_repos (name),
    path          TEXT NOT NULL,            -- relative to the tree, '/'-separated
    signature     TEXT NOT NULL,            -- blob hash (git) and size/mtime/inode on disk
    documents     INTEGER NOT NULL,         -- non-empty documents in the file (any kind)
    error         TEXT,                     -- why it does not parse (NULL = it parsed)
    scanned_at    TEXT NOT NULL,
    PRIMARY KEY (repo, path)
) WITHOUT ROWID;

CREATE TABLE git_sealed_secrets (
    id                      INTEGER PRIMARY KEY,
    repo                    TEXT NOT NULL,
    path                    TEXT NOT NULL,
    document                INTEGER NOT NULL,
    namespace               TEXT NOT NULL,  -- '' when a cluster-wide document names none
    name                    TEXT NOT NULL,
    scope                   INTEGER NOT NULL CHECK (scope BETWEEN 0 AND 2),
    item_count              INTEGER NOT NULL,
    ciphertext_fingerprint  TEXT NOT NULL,  -- as sealed_secrets.ciphertext_fingerprint
    items                   TEXT NOT NULL,
    keys                    TEXT NOT NULL,
    key_items               INTEGER NOT NULL,
    clusters                TEXT NOT NULL,
    state                   TEXT NOT NULL
                            CHECK (state = 'current' OR state = 'stale' OR state = 'unknown'
                                   OR state = 'compromised' OR state = 'failing'),
    state_changed_at        TEXT NOT NULL,
    malformed_reason        TEXT,
    first_seen              TEXT NOT NULL,
    last_seen               TEXT NOT NULL,
    UNIQUE (repo, path, document)
);
-- Provenance: the Git document an in-cluster object was applied from.
CREATE INDEX git_sealed_secrets_by_ciphertext ON git_sealed_secrets (ciphertext_fingerprint);
-- State counts (covering) and state-filtered pages in (repo, path, document) order.
CREATE INDEX git_sealed_secrets_by_state ON git_sealed_secrets (state, repo, path, document);
-- "Which Git documents use key K" (the reseal engine's question).
CREATE INDEX git_sealed_secrets_by_key ON git_sealed_secrets (keys, key_items);

ALTER TABLE sealed_secrets ADD COLUMN managed_by_tool TEXT;   -- 'flux' | 'argocd' | NULL
ALTER TABLE sealed_secrets ADD COLUMN managed_by_name TEXT;
ALTER TABLE sealed_secrets ADD COLUMN managed_by_hint INTEGER
    CHECK (managed_by_hint = 0 OR managed_by_hint = 1);       -- 1: only a hint label

UPDATE sealed_secrets SET resource_version = '';
DELETE FROM watch_resource_versions WHERE resource = 'sealedsecrets.bitnami.com';
