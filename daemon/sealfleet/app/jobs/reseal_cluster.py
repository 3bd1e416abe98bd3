"""One cluster's part of a reseal job: its planned SealedSecrets, sealed for the target key.

For each planned object, as the cluster shows it now:

- every item already sealed with the target key (the attribution cache says so for its
  ciphertext): nothing is written (*skipped*); this is what makes a replay idempotent;
- else, when sealfleet holds the private key of every item to reseal: each such item
  is opened with the key that sealed it and sealed for the target under the same label
  (``domain.resealing``, on the RSA thread pool); only ``spec.encryptedData`` values
  change;
- else the object goes to the controller's ``/v1/rotate`` (through the service proxy,
  as kubeseal does) and only the returned values of the items to reseal are spliced
  into the object read, provided the controller seals with the target key now.

The object is written back with the resourceVersion it was read at (PUT); a 409 means
someone else changed it: read it again and decide again (bounded).  Before the write,
the new values are recorded in the attribution cache as sealed with the target (they
are: we just sealed them), so neither the collect side nor a replay spends RSA on them.
An object counts as done only once the controller reports ``Synced=True`` for the
generation written (read once, then watched: ``reseal_synced``; bounded).  A plaintext
exists only inside ``domain.resealing``, one item at a time.

With a per-object journal (:class:`~sealfleet.app.jobs.reseal_journal.ObjectJournal`)
each object is marked as it goes: ``written`` (with the generation) once the PUT
succeeded, then ``done`` once Synced, ``skipped`` (already sealed with the target, or
gone), ``failed`` with the reason.  A replay does not read a done or skipped object
again, waits only for the Synced of a written one, and reads the rest: one GET each when
few are left, else one list.  The step's counts are then the journal's, over every run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import structlog

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import Conflict, KubeClient, NotFound
from sealfleet.adapters.store.records import JsonObject, JsonValue
from sealfleet.app.config import ClusterSettings
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import StepOutcome
from sealfleet.app.jobs.reseal_attributions import AttributionWriter
from sealfleet.app.jobs.reseal_journal import ObjectJournal
from sealfleet.app.jobs.reseal_reads import PAUSE_LIMIT as PAUSE_LIMIT
from sealfleet.app.jobs.reseal_reads import Patience as Patience
from sealfleet.app.jobs.reseal_reads import generation_of as generation_of
from sealfleet.app.jobs.reseal_reads import list_now as list_now
from sealfleet.app.jobs.reseal_reads import list_objects as list_objects
from sealfleet.app.jobs.reseal_reads import object_path as object_path
from sealfleet.app.jobs.reseal_reads import synced_state as synced_state
from sealfleet.app.jobs.reseal_synced import SyncWait
from sealfleet.domain import attribution, hybrid, resealing, sealed_secrets
from sealfleet.domain.jobs import StepState
from sealfleet.domain.keys import load_certificate
from sealfleet.domain.sealed_secrets import ItemsDecryptionError
from sealfleet.errors import FleetError, PermanentError

log = structlog.get_logger(__name__)

WRITE_CONCURRENCY = 8        # objects read, resealed and written at once per cluster
MAX_CONFLICTS = 5            # re-reads of one object changed under us before giving up
SYNC_TIMEOUT = 120.0         # seconds for the controller to report Synced after the writes
_FAILURES_SHOWN = 50
_REPLAY_GETS = 64           # a replay reads what is left one by one up to this many


@dataclasses.dataclass
class Tally:
    """What one cluster step did, for its detail (counts; failures named with reasons)."""

    planned: int = 0
    resealed: int = 0
    skipped: int = 0
    rotated_via_controller: int = 0
    conflicts_replanned: int = 0
    gone: int = 0
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # per phase
    read: int = 0               # objects read (listed or got) by this run of the step
    from_journal: int = 0       # objects the journal held as done or skipped at its start

    def detail(self, target_key: str) -> JsonObject:
        shown: list[JsonValue] = [{"ref": ref, "reason": reason} for ref, reason
                                  in sorted(self.failures.items())[:_FAILURES_SHOWN]]
        return {"target_key": target_key, "planned": self.planned, "resealed": self.resealed,
                "skipped": self.skipped, "rotated_via_controller": self.rotated_via_controller,
                "conflicts_replanned": self.conflicts_replanned, "gone": self.gone,
                "failed": len(self.failures), "failures": shown,
                "seconds": dict(self.seconds), "read": self.read,
                "from_journal": self.from_journal}

    def add_journaled(self, journaled: Mapping[str, Any]) -> None:
        """Count what earlier runs of the step finished (done or skipped objects)."""
        for obj in journaled.values():
            if obj.state == "done" and obj.outcome == "rotated_via_controller":
                self.rotated_via_controller += 1
            elif obj.state == "done":
                self.resealed += 1
            elif obj.state == "skipped" and obj.outcome == "gone":
                self.gone += 1
            elif obj.state == "skipped":
                self.skipped += 1
            else:
                continue
            self.conflicts_replanned += obj.conflicts
            self.from_journal += 1


class ClusterResealer:
    """One ``cluster:<name>`` step of a reseal job (see the module docstring)."""

    def __init__(self, ctx: JobContext, pool: Executor, cluster: ClusterSettings,
                 target_key: str, journal: ObjectJournal | None = None) -> None:
        self._ctx = ctx
        self._pool = pool
        self._cluster = cluster
        self._target_fp = target_key
        self._keyring = resealing.KeyRing(())
        self._target: resealing.TargetKey | None = None
        self._known: dict[str, str | None] = {}
        self._proxy: str | None = None
        self._rotate_refusal: str | None = None
        self._written: dict[str, int] = {}      # ref -> generation to see Synced for
        self._journal = journal
        self._outcome: dict[str, str] = {}      # ref -> resealed, already_target...
        self._conflicts: dict[str, int] = {}    # ref -> 409s met
        self._patience = Patience(cluster.name)
        self._attributions = AttributionWriter(ctx.store, lambda: ctx.keystore.epoch)
        self.tally = Tally()

    async def _prepare(self, objects: Mapping[str, Mapping[str, Any]]) -> None:
        ctx = self._ctx
        await ctx.keystore.materialize()
        self._keyring = resealing.KeyRing(ctx.keystore.loaded_keys())
        held = ctx.keystore.get(self._target_fp)
        if held is not None:
            self._target = held
        else:
            record = next((r for r in await ctx.store.keys.list_keys()
                           if r.fingerprint == self._target_fp and r.certificate_pem), None)
            if record is None or record.certificate_pem is None:
                raise PermanentError(f"no certificate is known for the target key "
                                     f"{self._target_fp}")
            self._target = load_certificate(record.certificate_pem.encode())
        hashes = [attribution.item_hash(value, sealed_secrets.identity_of(obj).label)
                  for obj in objects.values()
                  for value in sealed_secrets.encrypted_items(obj).values()]
        self._known = await ctx.store.inventory.get_attributions(hashes)

    async def run(self, refs: Sequence[str], *,
                  snapshot: Mapping[str, dict[str, Any]] | None = None) -> StepOutcome:
        """Reseal *refs* (``namespace/name``) as the cluster shows them now, or as
        *snapshot* shows those it holds (a read made earlier: a 409 then re-reads)."""
        cluster = self._cluster
        self.tally.planned = len(refs)
        todo = list(refs)
        journal = self._journal
        if journal is not None:
            self.tally.add_journaled({r: o for r, o in journal.journaled.items()
                                      if r in set(refs) and journal.final(r)})
            todo = [ref for ref in refs if not journal.final(ref)]
            for ref in todo:
                found = journal.journaled.get(ref)
                if found is not None and found.state == "written" and \
                        found.generation is not None:
                    self._written[ref] = found.generation     # its Synced still to see
                    self._outcome[ref] = found.outcome or "resealed"
                    self._conflicts[ref] = found.conflicts
                    self.tally.conflicts_replanned += found.conflicts
                    if found.outcome == "already_target":
                        self.tally.skipped += 1
                    elif found.outcome == "rotated_via_controller":
                        self.tally.rotated_via_controller += 1
                    else:
                        self.tally.resealed += 1
            todo = [ref for ref in todo if ref not in self._written]
        async with self._ctx.connect(cluster) as client:
            snapshot = snapshot or {}
            unread = set(todo) - set(snapshot)
            # A replay with little left reads it one by one; a first run lists.
            one_by_one = bool(unread) and journal is not None and \
                len(todo) < len(refs) and len(unread) <= _REPLAY_GETS
            listed = await self._patience.call(functools.partial(list_now, client)) \
                if unread and not one_by_one else {}
            if listed:
                self.tally.read += len(todo)
            planned = {ref: snapshot.get(ref) or listed.get(ref) for ref in todo}
            await self._prepare({r: o for r, o in planned.items() if o is not None})
            gate = asyncio.Semaphore(WRITE_CONCURRENCY)

            async def one(ref: str, obj: dict[str, Any] | None) -> None:
                async with gate:
                    try:
                        if obj is None and one_by_one:
                            namespace, _, name = ref.partition("/")
                            self.tally.read += 1
                            obj = await self._read(client, object_path(namespace, name))
                        await self._reseal_object(client, ref, obj)
                    except FleetError as error:
                        self.tally.failures[ref] = str(error)
                        self._mark(ref, "failed", error=str(error))

            started = time.monotonic()
            await asyncio.gather(*(one(ref, obj) for ref, obj in planned.items()))
            written = time.monotonic()
            await self._wait_synced(client)
            self.tally.seconds = {"write": round(written - started, 3),
                                  "synced": round(time.monotonic() - written, 3)}
        log.info("reseal_cluster_done", cluster=cluster.name, resealed=self.tally.resealed,
                 rotated=self.tally.rotated_via_controller, skipped=self.tally.skipped,
                 conflicts=self.tally.conflicts_replanned, failed=len(self.tally.failures))
        state = StepState.FAILED if self.tally.failures else (
            StepState.DONE if self._written or self.tally.skipped < self.tally.planned
            else StepState.SKIPPED)
        return StepOutcome(state, self.tally.detail(self._target_fp))

    # ------------------------------------------------------------ one object

    async def _reseal_object(self, client: KubeClient, ref: str,
                             obj: dict[str, Any] | None) -> None:
        namespace, _, name = ref.partition("/")
        path = object_path(namespace, name)
        for _ in range(MAX_CONFLICTS + 1):
            if obj is None:
                self.tally.gone += 1      # deleted since the plan: nothing left to reseal
                self._mark(ref, "skipped", outcome="gone")
                return
            try:
                body, via_controller = await self._resealed_body(client, ref, obj)
            except ItemsDecryptionError as error:
                raise PermanentError(str(error)) from None
            if body is None:
                self.tally.skipped += 1
                self._written[ref] = generation_of(obj)   # still wait for its Synced
                self._mark(ref, "written", outcome="already_target",
                           generation=generation_of(obj))
                return
            try:
                written = await self._patience.call(
                    functools.partial(client.replace_json, path, body))
            except Conflict:
                self.tally.conflicts_replanned += 1
                self._conflicts[ref] = self._conflicts.get(ref, 0) + 1
                obj = await self._read(client, path)
                continue
            self._written[ref] = generation_of(written)
            if via_controller:
                self.tally.rotated_via_controller += 1
            else:
                self.tally.resealed += 1
            self._mark(ref, "written", outcome="rotated_via_controller" if via_controller
                       else "resealed", generation=generation_of(written))
            return
        raise PermanentError(f"{ref}: changed by another writer {MAX_CONFLICTS + 1} times "
                             "while being resealed")

    def _mark(self, ref: str, state: str, *, outcome: str | None = None,
              generation: int | None = None, error: str | None = None) -> None:
        """The object's new state into the journal (batched there)."""
        if outcome is not None:
            self._outcome[ref] = outcome
        if self._journal is not None:
            self._journal.record(ref, state, outcome=self._outcome.get(ref),
                                 generation=generation if generation is not None
                                 else self._written.get(ref),
                                 conflicts=self._conflicts.get(ref, 0), error=error)

    def _synced(self, ref: str) -> None:
        already = self._outcome.get(ref) == "already_target"
        self._mark(ref, "skipped" if already else "done")

    async def _read(self, client: KubeClient, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._patience.call(
                functools.partial(client.get_json, path))
        except NotFound:
            return None
        hashes = [attribution.item_hash(v, sealed_secrets.identity_of(found).label)
                  for v in sealed_secrets.encrypted_items(found).values()]
        self._known.update(await self._ctx.store.inventory.get_attributions(
            [h for h in hashes if h not in self._known]))
        return found

    async def _resealed_body(self, client: KubeClient, ref: str, obj: dict[str, Any],
                             ) -> tuple[dict[str, Any] | None, bool]:
        """The object to write (None: already sealed with the target), and whether the
        controller resealed it."""
        target = self._target
        assert target is not None
        identity = sealed_secrets.identity_of(obj)
        values = sealed_secrets.encrypted_items(obj)
        known = {item: self._known.get(attribution.item_hash(value, identity.label))
                 for item, value in values.items()}
        legacy = bool((obj.get("spec") or {}).get("data"))
        needing = [item for item in values if known[item] != self._target_fp]
        if not needing and not legacy:
            return None, False
        hints = {item: fp for item, fp in known.items() if fp is not None}
        unheld = [item for item in needing if known[item] is not None
                  and known[item] not in self._keyring]
        if not unheld:
            try:
                resealed = await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: resealing.reseal(obj, self._keyring, target,
                                                         hints=hints))
            except ItemsDecryptionError:
                resealed = None   # opened by no key held here: the controller may
            if resealed is not None:
                # Every item is sealed with the target now, kept or new.
                await self._remember(identity.label, resealed.encrypted_data.values())
                return (resealed.apply(obj) if resealed.changed else None), False
        if legacy:   # the controller's rotation would rebuild it: not a splice of values
            raise PermanentError(f"{ref}: legacy spec.data that no key held here opens")
        return await self._rotated(client, ref, obj, needing), True

    async def _rotated(self, client: KubeClient, ref: str, obj: dict[str, Any],
                       needing: Sequence[str]) -> dict[str, Any]:
        """The object with the values ``/v1/rotate`` gives for *needing* spliced in."""
        namespace = self._cluster.controller_namespace
        if self._proxy is None and self._rotate_refusal is None:
            proxy = await self._patience.call(functools.partial(
                controller.proxy_name, client, namespace, self._cluster.controller_name))
            served = await self._patience.call(functools.partial(
                controller.fetch_certificate, client, namespace, proxy))
            if served.fingerprint != self._target_fp:
                self._rotate_refusal = (f"sealfleet holds no key for it and the controller "
                                        f"seals with {served.fingerprint}, not the target "
                                        f"{self._target_fp}")
            else:
                self._proxy = proxy
        if self._proxy is None:
            raise PermanentError(f"{ref}: {self._rotate_refusal}")
        proxy_name = self._proxy
        values = await self._patience.call(
            functools.partial(controller.rotate, client, namespace, proxy_name, obj))
        missing = [item for item in needing if item not in values]
        if missing:
            raise PermanentError(f"{ref}: /v1/rotate returned no value for item(s) "
                                 + ", ".join(repr(i) for i in missing))
        replaced = {item: values[item] for item in needing}
        label = sealed_secrets.identity_of(obj).label
        if self._target_fp in self._keyring:
            await self._check_opens(ref, label, replaced)
            await self._remember(label, replaced.values())
        spec = dict(obj.get("spec") or {})
        spec["encryptedData"] = {**sealed_secrets.encrypted_items(obj), **replaced}
        return {**obj, "spec": spec}

    async def _check_opens(self, ref: str, label: bytes, values: Mapping[str, str]) -> None:
        """The controller's new values open with the target key (checked when held)."""
        key = self._ctx.keystore.get(self._target_fp)
        if key is None:
            return

        def check() -> list[str]:
            failed = []
            for item, value in values.items():
                try:
                    hybrid.decrypt_with_index([key.private_key],
                                              sealed_secrets.decode_item(item, value), label)
                except FleetError:
                    failed.append(item)
            return failed
        failed = await asyncio.get_running_loop().run_in_executor(self._pool, check)
        if failed:
            raise PermanentError(f"{ref}: the controller's new value of item(s) "
                                 + ", ".join(repr(i) for i in failed)
                                 + " does not open with the target key")

    async def _remember(self, label: bytes, values: Any) -> None:
        """New values are sealed with the target: so says the attribution cache (once
        this returns, committed; in group commits with the other objects in flight)."""
        computed: list[tuple[str, str | None]] = [
            (attribution.item_hash(v, label), self._target_fp) for v in values]
        for item_hash, fingerprint in computed:
            self._known[item_hash] = fingerprint
        await self._attributions.put(computed)

    # ------------------------------------------------------------ Synced

    async def _wait_synced(self, client: KubeClient) -> None:
        """Until the controller reports Synced for every generation written (bounded)."""
        await SyncWait(client, self._written, on_synced=self._synced, on_failed=self._fail,
                       timeout=SYNC_TIMEOUT).run()

    def _fail(self, ref: str, reason: str) -> None:
        self.tally.failures[ref] = reason
        self._mark(ref, "failed", error=reason)
