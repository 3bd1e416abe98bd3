"""The repo scanner: SealedSecrets in the configured GitOps working trees, kept current.

One task per ``[[repos]]`` entry lists its tree (:mod:`sealfleet.adapters.git.walking`)
every ``rescan_interval``, when the config is reloaded (SIGHUP) and when the keystore
changes.  Only files whose signature changed are read and parsed again; their
SealedSecret documents are attributed by the fleet's :class:`Attributor` (owner
``repo:<name>``: repos take turns on the RSA threads with the clusters), the keys of
the clusters a file is meant for tried first, then judged against those clusters
(:func:`sealfleet.domain.check.judge`; the worst cluster's state is the document's)
and written to ``store.git`` in one transaction per pass.  Every pass also judges
the unchanged documents again, from memory, since a cluster's sealing key or the
compromised set may have moved.

A tree that cannot be listed, or has another branch checked out than ``base_branch``,
keeps its last inventory; the repo's ``last_error`` says why (logged once on failure
and once on recovery).  A file that does not parse is recorded with its reason and
skipped.  Nothing here ever writes to a tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from sealfleet.adapters.git import globs, manifests, walking
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import GitFileRecord, GitSealedSecretRecord, ItemFact
from sealfleet.app import checking
from sealfleet.app.attributing import Attributor
from sealfleet.app.config import RepoSettings, Settings
from sealfleet.app.keystore import Keystore
from sealfleet.domain import check
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import FleetError, InputError

log = structlog.get_logger(__name__)

_READ_BATCH = 32      # files read and parsed per thread hop
# Between scans, how often the clusters' keys are compared with those the documents
# were judged against (two small store reads): a renewed sealing key shows in seconds.
_REJUDGE_INTERVAL = 5.0


@dataclass
class _Document:
    """What the scanner remembers of one SealedSecret document between passes."""

    record: GitSealedSecretRecord

    @property
    def has_unknown(self) -> bool:
        return any(item.fingerprint is None for item in self.record.items)


@dataclass
class _File:
    signature: str
    documents: list[_Document] = field(default_factory=list)
    error: str | None = None
    epoch: int | None = None     # keystore epoch its items were attributed at (None: unsure)


Keys = Mapping[str, check.ClusterKeys]


def _judge(record: GitSealedSecretRecord, keys: Keys,
           compromised: frozenset[str]) -> SecretState:
    items = [(item.item, item.fingerprint) for item in record.items]
    verdicts = [check.judge(items, keys.get(name, check.ClusterKeys(name, None)),
                            compromised=compromised, malformed_reason=record.malformed_reason)
                for name in record.clusters]
    return check.worst_state(verdicts) or SecretState.UNKNOWN


class RepoScan:
    """One repo's inventory in memory and the passes that keep it current."""

    def __init__(self, repo: RepoSettings, deps: RepoDeps) -> None:
        self.repo = repo
        self._deps = deps
        self._files: dict[str, _File] = {}
        self._loaded = False
        self._failing: str | None = None
        self._judged_with: Keys = {}
        self.passes = 0
        self.wakeup = asyncio.Event()

    @property
    def name(self) -> str:
        return self.repo.name

    @property
    def owner(self) -> str:
        return f"repo:{self.repo.name}"

    async def _load(self) -> None:
        """What the store holds of this repo (a restart re-reads no unchanged file)."""
        store = self._deps.store.git
        await store.upsert_repo(self.name, path=str(self.repo.path))
        files = {f.path: _File(f.signature, error=f.error)
                 for f in await store.files_of_repo(self.name)}
        for record in await store.sealed_secrets_of_repo(self.name):
            if record.path in files:
                files[record.path].documents.append(_Document(record))
        self._files = files
        self._loaded = True

    async def scan(self) -> None:
        """One pass: list, parse what changed, attribute, judge everything, write."""
        if not self._loaded:
            await self._load()
        started = time.monotonic()
        repo = self.repo
        tree: walking.Tree | None = None
        problem: str | None = None
        try:
            tree = await walking.list_tree(repo.path, globs.matcher(repo.paths))
        except FleetError as error:
            problem = str(error)
        if tree is not None and tree.is_git and repo.base_branch is not None \
                and tree.head_branch != repo.base_branch:
            problem = (f"{repo.path}: has {tree.head_branch or 'a detached HEAD'} checked out, "
                       f"not base_branch {repo.base_branch}: not scanned")
        keys = await self._deps.cluster_keys(self._cluster_names())
        self._judged_with = keys
        changed = 0
        if tree is not None and problem is None:
            changed = await self._apply(tree, keys)
            if repo.remote is not None and repo.remote not in tree.remotes:
                problem = f"{repo.path}: has no remote named {repo.remote}"
        moved = await self._rejudge(keys)
        duration_ms = round((time.monotonic() - started) * 1000)
        await self._deps.store.git.record_repo_scan(
            self.name, is_git=tree.is_git if tree else None,
            head_commit=tree.head_commit if tree else None,
            head_branch=tree.head_branch if tree else None,
            last_scan_at=dt.datetime.now(dt.UTC), last_error=problem,
            scan_duration_ms=duration_ms)
        self._note_outcome(problem)
        self.passes += 1
        self._deps.on_change()
        # One summary per pass; at info only when it found something new.
        (log.info if changed or moved else log.debug)(
            "repo_scanned", repo=self.name, files=len(self._files), changed_files=changed,
            states_moved=moved, duration_ms=duration_ms)

    def _cluster_names(self) -> tuple[str, ...]:
        repo = self.repo
        return tuple(dict.fromkeys([*repo.clusters, *(c for r in repo.rules
                                                      for c in r.clusters)]))

    async def rejudge_if_clusters_moved(self) -> None:
        """Between scans: judge the documents again when a cluster's sealing key or
        holdings moved (a renewal, a key sync) since they were last judged."""
        if not self._loaded:
            return
        keys = await self._deps.cluster_keys(self._cluster_names())
        if keys != self._judged_with and await self._rejudge(keys):
            self._deps.on_change()
        self._judged_with = keys

    def _note_outcome(self, problem: str | None) -> None:
        if problem is not None and self._failing is None:
            log.warning("repo_scan_failed", repo=self.name, error=problem)
        elif problem is None and self._failing is not None:
            log.info("repo_scan_recovered", repo=self.name)
        self._failing = problem

    def _changed(self, tree: walking.Tree) -> list[walking.TreeFile]:
        epoch = self._deps.keystore.epoch
        changed = []
        for entry in tree.files:
            known = self._files.get(entry.path)
            if known is None or known.signature != entry.signature:
                changed.append(entry)
            elif known.epoch != epoch and any(d.has_unknown for d in known.documents):
                changed.append(entry)   # a new key may open what nothing opened before
        return changed

    async def _apply(self, tree: walking.Tree, keys: Keys) -> int:
        """Read, parse and attribute the changed files; write them with the removed ones."""
        changed = self._changed(tree)
        removed = sorted(set(self._files) - {f.path for f in tree.files})
        if not changed and not removed:
            return 0
        now = dt.datetime.now(dt.UTC)
        epoch = self._deps.keystore.epoch
        file_records: list[GitFileRecord] = []
        documents: list[GitSealedSecretRecord] = []
        fresh: dict[str, _File] = {}
        for start in range(0, len(changed), _READ_BATCH):
            batch = changed[start:start + _READ_BATCH]
            parsed = await asyncio.to_thread(_read_and_parse, self.repo.path, batch)
            attributed = await self._attribute(
                [(entry.path, result.sealed) for entry, result in zip(batch, parsed,
                                                                       strict=True)],
                keys, now)
            for entry, result in zip(batch, parsed, strict=True):
                previous = self._files.get(entry.path)
                if result.error is not None and (previous is None or previous.error is None):
                    log.warning("git_file_unparseable", repo=self.name, path=entry.path,
                                reason=result.error)
                file_records.append(GitFileRecord(self.name, entry.path, entry.signature,
                                                  result.documents, result.error, now))
                records = attributed.get(entry.path, [])
                documents.extend(records)
                fresh[entry.path] = _File(entry.signature, [_Document(r) for r in records],
                                          result.error, epoch)
        await self._deps.store.git.apply_scan(self.name, files=file_records,
                                              documents=documents, removed=removed)
        for path in removed:
            del self._files[path]
        self._files.update(fresh)
        return len(changed) + len(removed)

    async def _attribute(self, files: Sequence[tuple[str, Sequence[manifests.GitDocument]]],
                         keys: Keys, now: dt.datetime,
                         ) -> dict[str, list[GitSealedSecretRecord]]:
        """The files' documents attributed (one attributor call per set of target
        clusters, their keys tried first) and judged."""
        by_clusters: dict[tuple[str, ...], list[tuple[str, manifests.GitDocument]]] = {}
        for path, sealed in files:
            for doc in sealed:
                by_clusters.setdefault(self.repo.clusters_for(path), []).append((path, doc))
        compromised = self._deps.keystore.compromised
        found: dict[str, list[GitSealedSecretRecord]] = {}
        for clusters, docs in by_clusters.items():
            preferred, likely = checking.preferences([keys[c] for c in clusters if c in keys])
            answers = await self._deps.attributor.attribute(
                [checking.requests_for(doc.parsed) for _, doc in docs], owner=self.owner,
                preferred=preferred, likely=likely)
            for path, doc in docs:
                parsed = doc.parsed
                record = GitSealedSecretRecord(
                    repo=self.name, path=path, document=doc.index, namespace=parsed.ref[0],
                    name=parsed.ref[1], scope=parsed.scope,
                    ciphertext_fingerprint=parsed.ciphertext_fingerprint,
                    items=tuple(ItemFact(item, h, answers.get(h))
                                for item, h, _ in parsed.items),
                    clusters=clusters, state=SecretState.UNKNOWN, observed_at=now,
                    malformed_reason=parsed.malformed_reason)
                record = dataclasses.replace(record, state=_judge(record, keys, compromised))
                found.setdefault(path, []).append(record)
        for records in found.values():
            records.sort(key=lambda r: r.document)
        return found

    async def _rejudge(self, keys: Keys) -> int:
        """Judge every remembered document again; write the states that moved."""
        compromised = self._deps.keystore.compromised
        moved: list[tuple[str, int, SecretState]] = []
        for known in self._files.values():
            for doc in known.documents:
                state = _judge(doc.record, keys, compromised)
                if state is not doc.record.state:
                    doc.record = dataclasses.replace(doc.record, state=state)
                    moved.append((doc.record.path, doc.record.document, state))
        await self._deps.store.git.update_states(self.name, moved)
        return len(moved)


def _read_and_parse(root: Path, batch: Sequence[walking.TreeFile]) -> list[manifests.ParsedFile]:
    """On a thread: read and parse each file (a file's problem is its own result)."""
    results = []
    for entry in batch:
        try:
            data = walking.read_file(root, entry.path)
        except InputError as error:
            results.append(manifests.ParsedFile(error=f"{entry.path}: {error}"))
            continue
        results.append(manifests.parse_file(entry.path, data))
    return results


@dataclass(frozen=True)
class RepoDeps:
    """What the repo scans share with the fleet."""

    store: Store
    keystore: Keystore
    attributor: Attributor
    cluster_keys: Callable[[Sequence[str]], Awaitable[dict[str, check.ClusterKeys]]]
    on_change: Callable[[], None]


class RepoScanner:
    """Runs one :class:`RepoScan` per configured repo; added and removed on reload."""

    def __init__(self, settings: Settings, store: Store, keystore: Keystore,
                 attributor: Attributor, *, on_change: Callable[[], None] = lambda: None,
                 clusters_scanned: asyncio.Event | None = None) -> None:
        self._settings = settings
        self._store = store
        self._keystore = keystore
        self._deps = RepoDeps(store=store, keystore=keystore, attributor=attributor,
                              cluster_keys=self._cluster_keys, on_change=on_change)
        self.scans: dict[str, RepoScan] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reconcile = asyncio.Event()
        self._keys_changed = keystore.subscribe()
        if clusters_scanned is None:
            clusters_scanned = asyncio.Event()
            clusters_scanned.set()
        self._clusters_scanned = clusters_scanned

    async def _cluster_keys(self, names: Sequence[str]) -> dict[str, check.ClusterKeys]:
        configured = [c for c in self._settings.clusters if c.name in set(names)]
        return await checking.cluster_keys(self._store, configured)

    def apply_settings(self, settings: Settings) -> None:
        """A reloaded config (SIGHUP): repos added, removed or changed, and every repo
        scanned again at once."""
        self._settings = settings
        self._reconcile.set()
        for scan in self.scans.values():
            scan.wakeup.set()

    async def run(self) -> None:
        """Until cancelled."""
        try:
            await self._forget_unconfigured()
            async with asyncio.TaskGroup() as group:
                await self._apply(group)
                while True:
                    await self._wait_for_change()
                    await self._apply(group)
        finally:
            self._keystore.unsubscribe(self._keys_changed)
            self._tasks.clear()

    async def _forget_unconfigured(self) -> None:
        """Repos dropped from the config while the daemon was down leave the report."""
        configured = {repo.name for repo in self._settings.repos}
        for record in await self._store.git.list_repos():
            if not record.removed and record.name not in configured:
                await self._store.git.remove_repo(record.name)
                log.info("repo_removed", repo=record.name, reason="not in config")

    async def _wait_for_change(self) -> None:
        reconcile = asyncio.ensure_future(self._reconcile.wait())
        keys = asyncio.ensure_future(self._keys_changed.wait())
        try:
            await asyncio.wait({reconcile, keys}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (reconcile, keys):
                waiter.cancel()
        if self._keys_changed.is_set():
            self._keys_changed.clear()
            for scan in self.scans.values():
                scan.wakeup.set()

    async def _apply(self, group: asyncio.TaskGroup) -> None:
        self._reconcile.clear()
        wanted = {repo.name: repo for repo in self._settings.repos}
        for name, scan in list(self.scans.items()):
            if name not in wanted or wanted[name] != scan.repo:
                self._tasks.pop(name).cancel()
                del self.scans[name]
                if name not in wanted:
                    await self._store.git.remove_repo(name)
                    self._deps.on_change()
                    log.info("repo_removed", repo=name)
        for name, repo in wanted.items():
            if name not in self.scans:
                scan = self.scans[name] = RepoScan(repo, self._deps)
                self._tasks[name] = group.create_task(self._loop(scan), name=f"repo:{name}")

    async def _loop(self, scan: RepoScan) -> None:
        """Scan, then wait for the interval or a wake-up (every few seconds judging the
        documents again if the clusters moved); a failure (a bug, a store error) is
        logged and retried at the next interval, never ends the fleet."""
        await self._clusters_scanned.wait()   # judge against known keys from the start
        while True:
            scan.wakeup.clear()
            await self._guarded(scan, scan.scan)
            deadline = time.monotonic() + scan.repo.rescan_interval_seconds
            while not scan.wakeup.is_set() and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, _REJUDGE_INTERVAL)):
                        await scan.wakeup.wait()
                if not scan.wakeup.is_set():
                    await self._guarded(scan, scan.rejudge_if_clusters_moved)

    @staticmethod
    async def _guarded(scan: RepoScan, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except FleetError as error:
            log.warning("repo_scan_error", repo=scan.name, error=str(error))
        except Exception:
            log.exception("repo_scan_crashed", repo=scan.name)
