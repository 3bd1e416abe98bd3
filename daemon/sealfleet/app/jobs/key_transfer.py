"""``keys import`` and ``keys export`` inside a running daemon.

**Import** is a job like the other key jobs.  The CLI opens the backup itself (the
identity that decrypts it never leaves the user) and hands the daemon the key List over
its socket; :meth:`KeyTransfer.submit_import` stages the keys in memory and submits a
``key_import`` job whose plan carries them as the job's new keys: the runner stores them
encrypted under the KEK, with source ``imported``, in the very transaction that
journals the job and its audit entry.  The journal's parameters name only the keys'
fingerprints and the states the backup gives them, never key material.  Each step
``import:<fp>`` is idempotent: it makes the keystore learn the stored key (a new key
wakes the backup keeper, sealed-secrets #359) and restores the backup's state when it
is more severe than the store's (``compromised`` > ``retired`` > ``active``).

**Export** has nothing to resume: :meth:`KeyTransfer.export` reads every stored key,
encrypts it for the recipients or passphrase the caller gave (or the daemon's
``[backup]`` encryption), and appends an audit entry (who, how many keys, encrypted to
what) before the bytes are returned.  Both are offered on the unix socket only: the
bytes are private keys, in the clear (import) or under the caller's encryption.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from sealfleet.adapters import backup
from sealfleet.adapters.http_api.key_transfer_api import ExportAsked
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject, JsonValue
from sealfleet.app import backups
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import Plan, StepOutcome
from sealfleet.domain import keys as domain_keys
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.keys import KeySource, SealingKey
from sealfleet.errors import FleetError, RefusedError

log = structlog.get_logger(__name__)

Entries = Sequence[tuple[SealingKey, backup.BackedUpKey]]
_SEVERITY = {"active": 0, "retired": 1, "compromised": 2}


class KeyImport:
    """The ``key_import`` job: staged keys into the keystore, states restored."""

    kind = JobKind.KEY_IMPORT
    concurrency = 1

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._staged: dict[str, list[SealingKey]] = {}

    def stage(self, entries: Entries, *, origin: str) -> JsonObject:
        """Hold the keys for the next :meth:`plan`; returns the job's parameters (public
        facts only: what goes into the journal)."""
        for key, facts in entries:
            if domain_keys.fingerprint(key.public_key) != key.fingerprint \
                    or facts.fingerprint != key.fingerprint:
                raise RefusedError(f"{origin}: refused: the certificate of {key.fingerprint} "
                                   "is not its private key's")
        upload = secrets.token_hex(16)
        self._staged[upload] = [key for key, _ in entries]
        keys: list[JsonValue] = [{"fingerprint": facts.fingerprint, "state": facts.state}
                                 for _, facts in entries]
        return {"upload": upload, "origin": origin, "keys": keys}

    async def plan(self, params: JsonObject) -> Plan:
        upload = str(params.get("upload", ""))
        staged = self._staged.pop(upload, None)
        if staged is None:
            raise RefusedError("key_import: no keys staged for this request (send the key "
                               "List to POST /api/v1/keys/import)")
        journaled = {k: v for k, v in params.items() if k != "upload"}
        fingerprints: list[JsonValue] = [key.fingerprint for key in staged]
        return Plan(steps=[f"import:{key.fingerprint}" for key in staged], params=journaled,
                    audit={"origin": params.get("origin"), "fingerprints": fingerprints},
                    new_keys=staged, new_key_source=KeySource.IMPORTED)

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        fingerprint = step.partition(":")[2]
        keystore = self._ctx.keystore
        held_before = fingerprint in keystore
        await keystore.refresh()       # the key stored with the journal entry becomes known
        records = {r.fingerprint: r for r in await self._ctx.store.keys.list_keys()}
        record = records.get(fingerprint)
        if record is None or not record.has_private_key:
            raise FleetError(f"key {fingerprint}: not in the store after the import")
        wanted = next((str(k.get("state")) for k in _key_facts(job)
                       if k.get("fingerprint") == fingerprint), "active")
        detail: JsonObject = {"fingerprint": fingerprint, "already_held": held_before}
        if _SEVERITY.get(wanted, 0) > _SEVERITY.get(record.state, 0):
            await self._ctx.store.keys.set_key_state(
                fingerprint, wanted, actor=job.actor,
                reason=f"restored from {job.params.get('origin')} by job {job.id}")
            await keystore.refresh()   # the compromised set, through the keystore's lock
            detail = {**detail, "state_restored": wanted}
        return StepOutcome(StepState.SKIPPED if held_before and "state_restored" not in detail
                           else StepState.DONE, detail)

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        added: list[JsonValue] = [s.ref.partition(":")[2] for s in steps
                                  if not s.detail.get("already_held")]
        held: list[JsonValue] = [s.ref.partition(":")[2] for s in steps
                                 if s.detail.get("already_held")]
        restored: list[JsonValue] = [{"fingerprint": s.ref.partition(":")[2],
                                      "state": s.detail["state_restored"]}
                                     for s in steps if "state_restored" in s.detail]
        return {"added": added, "already_held": held, "states_restored": restored}


def _key_facts(job: JobRecord) -> list[dict[str, JsonValue]]:
    keys = job.params.get("keys")
    return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []


class Submitter(Protocol):
    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord: ...


class KeyTransfer:
    """What the API offers for imports and exports (its ``KeyTransferPort``)."""

    def __init__(self, ctx: JobContext, importer: KeyImport, runner: Submitter, *,
                 backup_policy: Callable[[], backups.BackupPolicy | None]) -> None:
        self._ctx = ctx
        self._importer = importer
        self._runner = runner
        self._policy = backup_policy

    async def submit_import(self, document: bytes, *, origin: str, actor: str) -> JobRecord:
        """A key List (plaintext; the CLI decrypted it) as a ``key_import`` job."""
        entries = await asyncio.to_thread(backup.read_backup, document, None, source=origin)
        params = self._importer.stage(entries, origin=origin)
        return await self._runner.submit(JobKind.KEY_IMPORT, params, actor=actor)

    async def export(self, request: ExportAsked, *, actor: str) -> bytes:
        """Every stored key, encrypted as asked; audited before it is returned."""
        encryption: backup.Encryption | None
        if request.plaintext:
            encryption, how = None, "plaintext key List"
        elif request.recipients is not None:
            encryption = backup.parse_recipients(request.recipients, source="recipients")
            how = f"age, {len(encryption.recipients)} recipient(s)"
        elif request.passphrase is not None:
            if len(request.passphrase) < backup.MIN_PASSPHRASE_CHARS:
                raise RefusedError(f"the passphrase is shorter than "
                                   f"{backup.MIN_PASSPHRASE_CHARS} characters")
            encryption, how = backup.Passphrase(request.passphrase, "request"), "age, passphrase"
        else:
            policy = self._policy()
            if policy is None:
                raise RefusedError("give recipients or a passphrase: the daemon has no "
                                   "[backup] encryption configured")
            encryption, how = policy.encryption, f"age, [backup] {policy.encryption.source}"
        store = self._ctx.store
        keys, records = await backups.stored_keys(store)
        if not keys:
            raise RefusedError("the store holds no private keys: nothing to export")
        data = (backup.plaintext_key_list(keys, records) if encryption is None
                else await asyncio.to_thread(backup.write_backup, keys, records, encryption))
        fingerprints: list[JsonValue] = [k.fingerprint for k in
                                         sorted(keys, key=lambda k: k.fingerprint)]
        await store.audit.record("keys_exported", actor, {"encryption": how,
                                                          "fingerprints": fingerprints})
        log.info("keys_exported", actor=actor, keys=len(fingerprints), encryption=how)
        return data
