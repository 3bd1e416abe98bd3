-- The per-object journal of a job's steps (the reseal job: every planned SealedSecret of
-- a cluster:<name> step, every planned document of a repo:<name> step).  Written as
-- 'planned' in the transaction that journals the job, then moved in batches as the step
-- goes (one transaction per batch, never one per object): 'written' (the new ciphertext
-- is in the cluster, at generation; the controller's Synced still to be seen), then
-- 'done', 'skipped' (nothing to write: already sealed with the target, or gone) or
-- 'failed' (error says why).  A replay reads again only what is neither done nor
-- skipped.  outcome says how (resealed, rotated_via_controller, already_target, gone),
-- conflicts how many times a 409 made the step read and reseal it again.  Names and
-- fingerprints only, never a value.  A system of record, like jobs and job_items.

CREATE TABLE job_objects (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    step        TEXT NOT NULL,
    ref         TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('planned', 'written', 'done', 'skipped', 'failed')),
    outcome     TEXT,
    generation  INTEGER,
    conflicts   INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (job_id, step, ref)
) WITHOUT ROWID;
