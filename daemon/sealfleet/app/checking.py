"""Judging SealedSecrets against clusters: the repo scanner's states and the CI check.

Both need the same two things: what each cluster holds (:func:`cluster_keys`, read from
the inventory: the sealing key its controller serves, the key Secrets it loads) and
which key sealed each item (the fleet's :class:`Attributor`: memory, the store, then
RSA on the daemon's pool, trying only the session-key unwrap, so nothing is
decrypted).  The decision itself is pure (:mod:`sealfleet.domain.check`).

:class:`Checker` answers ``POST /api/v1/check`` (and so ``sealfleet check``): per
document and cluster, can that cluster unseal it and is it sealed with the cluster's
current key.  The answer names items and key fingerprints, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sealfleet.adapters.git import manifests
from sealfleet.adapters.store import Store
from sealfleet.app.attributing import Attributor, ItemRequest
from sealfleet.app.keystore import Keystore
from sealfleet.domain import check
from sealfleet.domain.observed import Parsed
from sealfleet.errors import InputError

# Key Secrets the controller loads: those labelled active, and legacy ones found by
# name alone (no label).  A key labelled compromised is held but not loaded.
_LOADED_LABELS = (None, "active")
# One check request: a CI run checks a change's files, not a whole fleet's history.
MAX_CHECK_DOCUMENTS = 500
MAX_CHECK_ITEMS = 4096
CHECK_OWNER = "check"   # attribution owner: takes turns with the clusters and repos


class ClusterSource(Protocol):
    """What the checker needs of a configured cluster (``ClusterSettings`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def read_key_secrets(self) -> bool: ...


async def cluster_keys(store: Store, clusters: Sequence[ClusterSource],
                       ) -> dict[str, check.ClusterKeys]:
    """Each cluster's sealing key and the keys its controller loads, as last observed.

    Holdings are known only for a cluster whose key Secrets are read and that has been
    scanned; otherwise None (the check then vouches only for its sealing key).
    """
    recorded = {c.name: c for c in await store.inventory.list_clusters()}
    holdings = await store.inventory.key_holdings_by_cluster()
    found = {}
    for cluster in clusters:
        record = recorded.get(cluster.name)
        held: frozenset[str] | None = None
        if cluster.read_key_secrets and record is not None and record.last_scan_at is not None:
            held = frozenset(h.fingerprint for h in holdings.get(cluster.name, ())
                             if h.label_value in _LOADED_LABELS)
        found[cluster.name] = check.ClusterKeys(
            cluster.name, record.sealing_key if record is not None else None, held)
    return found


def requests_for(parsed: Parsed) -> list[ItemRequest]:
    return [ItemRequest(h, c, parsed.label, parsed.sealed_at)
            for _, h, c in parsed.attributed_items]


def preferences(keys: Sequence[check.ClusterKeys]) -> tuple[list[str], set[str]]:
    """The attributor's base order for documents meant for *keys*' clusters: their
    sealing keys first, then the keys they hold."""
    preferred = list(dict.fromkeys(k.sealing_key for k in keys if k.sealing_key))
    likely = {f for k in keys for f in (k.held or ())}
    return preferred, likely


def item_keys(parsed: Parsed, answers: Mapping[str, str | None]) -> list[tuple[str, str | None]]:
    return [(item, answers.get(h)) for item, h, _ in parsed.items]


def verdict_entry(verdict: check.Verdict, keys: check.ClusterKeys) -> dict[str, Any]:
    return {"cluster": verdict.cluster, "decryptable": verdict.decryptable,
            "current": verdict.current, "sealing_key": keys.sealing_key,
            "state": str(verdict.state), "reasons": list(verdict.reasons)}


class Checker:
    """The daemon side of ``sealfleet check``."""

    def __init__(self, store: Store, keystore: Keystore, attributor: Attributor,
                 clusters: Callable[[], Sequence[ClusterSource]]) -> None:
        self._store = store
        self._keystore = keystore
        self._attributor = attributor
        self._clusters = clusters

    async def check(self, request: check.CheckRequest) -> dict[str, Any]:
        """The JSON answer of ``POST /api/v1/check``.  Items beyond the per-object bound
        stay unattributed, and their document's reason says so."""
        configured = {c.name: c for c in self._clusters()}
        for name in request.clusters:
            if name not in configured:
                raise check.UnknownClusterError(f"no cluster named {name!r}")
        wanted = [configured[n] for n in dict.fromkeys(request.clusters)] \
            if request.clusters else list(configured.values())
        if len(request.documents) > MAX_CHECK_DOCUMENTS:
            raise InputError(f"at most {MAX_CHECK_DOCUMENTS} documents per check")
        keys = await cluster_keys(self._store, wanted)
        judged = [(doc, manifests.parse_sealed_secret(doc.obj)) for doc in request.documents
                  if manifests.is_sealed_secret(doc.obj)]
        if sum(len(p.attributed_items) for _, p in judged) > MAX_CHECK_ITEMS:
            raise InputError(f"at most {MAX_CHECK_ITEMS} items per check")
        preferred, likely = preferences(list(keys.values()))
        answers = await self._attributor.attribute(
            [requests_for(parsed) for _, parsed in judged], owner=CHECK_OWNER,
            preferred=preferred, likely=likely)
        compromised = self._keystore.compromised
        entries = []
        failed = bool(request.errors)
        for doc, parsed in judged:
            items = item_keys(parsed, answers)
            verdicts = [check.judge(items, keys[c.name], compromised=compromised,
                                    malformed_reason=parsed.malformed_reason)
                        for c in wanted]
            fails = check.would_fail(verdicts, every_cluster=bool(request.clusters),
                                     require_current=request.require_current)
            failed |= fails
            entries.append({
                "source": doc.source, "document": doc.document,
                "namespace": parsed.ref[0], "name": parsed.ref[1],
                "scope": parsed.scope.cli_name, "ok": not fails,
                "items": [{"item": item, "fingerprint": fp} for item, fp in items],
                "clusters": [verdict_entry(v, keys[v.cluster]) for v in verdicts],
            })
        ignored = len(request.documents) - len(judged)
        return {"ok": not failed, "clusters": [c.name for c in wanted],
                "require_current": request.require_current,
                "documents": entries, "ignored_documents": ignored,
                "errors": [{"source": s, "error": e} for s, e in request.errors]}
