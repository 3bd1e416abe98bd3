-- Reseals waiting on an unmerged sealfleet/reseal-* branch.  Until someone merges such a
-- branch, base_branch (and so git_sealed_secrets) still holds the old ciphertexts: this
-- table says which documents a pending branch already reseals, and with which key, so
-- the report can name the branch beside a document that is still stale, and a later
-- reseal does not make another branch for it (app/jobs/reseal_git.py).
--
-- One row per document (repo, path, document: the index of git_sealed_secrets), with
-- namespace and name as found on the branch (a row only counts while they match the
-- document on the base), the branch, the commit that resealed it and the target key.
-- Rows of a branch that is no longer pending (merged or deleted) are dropped by the
-- next reseal of the repository.  A cache of what the repository shows: rebuildable.

CREATE TABLE git_pending_reseals (
    repo         TEXT NOT NULL,
    path         TEXT NOT NULL,
    document     INTEGER NOT NULL,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    branch       TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    target_key   TEXT NOT NULL,
    job_id       TEXT,                     -- the job that found or made it
    recorded_at  TEXT NOT NULL,
    PRIMARY KEY (repo, path, document)
) WITHOUT ROWID;

CREATE INDEX git_pending_reseals_by_branch ON git_pending_reseals (repo, branch);
