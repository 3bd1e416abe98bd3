"""Jobs: every mutation sealfleet makes, as a journaled sequence of idempotent steps.

A job is written to the journal with all its steps *before* any of them acts; each step
moves ``pending -> running -> done | failed | skipped`` and is idempotent, so a daemon
killed at any moment resumes the job from its journal at the next start and reaches
the same result.  This module holds the states and the rules between them (pure).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class JobState(enum.StrEnum):
    PENDING = "pending"      # journaled, not started
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every step done (or skipped) and the result verified
    FAILED = "failed"        # a step or the final verification failed
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"      # a step found running at start was interrupted: run it again
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"      # nothing to do (already so); counts as done

    @property
    def finished(self) -> bool:
        return self in (StepState.DONE, StepState.FAILED, StepState.SKIPPED)


class JobKind(enum.StrEnum):
    KEY_SYNC = "key_sync"        # bring every cluster's key Secrets to the fleet key set
    RENEWAL = "renewal"          # a new master key, then a sync
    COMPROMISE = "compromise"    # mark a key compromised, renew, report the blast radius
    RETIRE = "retire"            # take a key out of every cluster
    ADOPT = "adopt"              # take a cluster's keys into fleet custody
    KEY_IMPORT = "key_import"    # keys from a backup or a PEM pair into fleet custody
    RESEAL = "reseal"            # re-encrypt stale SealedSecrets with the current key
    RELABEL = "relabel"          # a compromised key no cluster needs any more, relabelled


def outcome(steps: Iterable[StepState]) -> JobState:
    """What a job's steps add up to once none is pending or running."""
    states = list(steps)
    if any(not state.finished for state in states):
        return JobState.RUNNING
    return JobState.FAILED if StepState.FAILED in states else JobState.SUCCEEDED
