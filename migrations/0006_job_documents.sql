-- Jobs become documents a user can follow: who asked (actor), the outcome's details
-- (result: JSON, e.g. a compromise's blast radius), when they started and finished; and
-- each step keeps what it found (detail: JSON, e.g. the fingerprint a cluster serves)
-- and its place in the job (position), so steps are shown in the order they were planned.

ALTER TABLE jobs ADD COLUMN actor TEXT NOT NULL DEFAULT 'sealfleet';
ALTER TABLE jobs ADD COLUMN result TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN started_at TEXT;
ALTER TABLE jobs ADD COLUMN finished_at TEXT;
ALTER TABLE job_items ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';
ALTER TABLE job_items ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
