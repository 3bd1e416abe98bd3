"""Builders for store records used by the store tests (imported by module name)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from sealfleet.adapters.store.records import ItemFact, SealedSecretRecord
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def sealed(cluster: str, namespace: str, name: str, keys: Sequence[str | None] = ("K1",), *,
           state: SecretState = SecretState.CURRENT, observed_at: dt.datetime = T0,
           uid: str | None = None, rv: str = "1", synced: bool | None = True,
           item_names: Sequence[str] | None = None) -> SealedSecretRecord:
    """A SealedSecret whose item i was sealed by keys[i] (None: no known key)."""
    names = item_names or [f"item{i}" for i in range(len(keys))]
    items = tuple(
        ItemFact(item, hashlib.sha256(f"{cluster}/{namespace}/{name}/{item}/{rv}".encode())
                 .hexdigest(), key)
        for item, key in zip(names, keys, strict=True))
    return SealedSecretRecord(
        cluster=cluster, namespace=namespace, name=name,
        uid=uid or f"uid-{cluster}-{namespace}-{name}", resource_version=rv, generation=1,
        scope=Scope.STRICT, ciphertext_fingerprint=hashlib.sha256(name.encode()).hexdigest(),
        items=items, state=state, synced=synced,
        synced_message=None if synced is not False else "no key could decrypt secret",
        observed_at=observed_at)
