"""Which compromised keys still seal something: the hook the reseal job ends with.

A compromised key stays loaded in the clusters until nothing inventoried is sealed with
it any more (the controller could not unseal those objects otherwise); only then does a
key sync relabel its key Secrets ``compromised`` (``planning/key_sync`` already refuses
sooner, per cluster).  After a reseal, :func:`still_sealing` says which compromised keys
are done with (``in_use`` false: a ``key_sync`` relabels them) and which are not, with
what still uses them, in clusters and in Git; ``relabel_job.due`` reads its cluster
objects to tell when a relabel a reseal had to skip has become possible.  Reads only;
nothing here acts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sealfleet.adapters.store import Store
from sealfleet.domain.keys import KeyState


@dataclass(frozen=True)
class CompromisedKeyUse:
    fingerprint: str
    cluster_objects: tuple[tuple[str, str, str], ...]   # (cluster, namespace, name)
    git_documents: tuple[tuple[str, str, int], ...]     # (repo, path, document)

    @property
    def in_use(self) -> bool:
        return bool(self.cluster_objects or self.git_documents)


async def still_sealing(store: Store, fingerprints: Iterable[str] | None = None,
                        ) -> list[CompromisedKeyUse]:
    """Every compromised key (or those of *fingerprints* that are compromised), with the
    inventoried SealedSecrets and Git documents that still have an item sealed by it."""
    compromised = sorted(r.fingerprint for r in await store.keys.list_keys()
                         if r.state == KeyState.COMPROMISED)
    if fingerprints is not None:
        wanted = set(fingerprints)
        compromised = [fp for fp in compromised if fp in wanted]
    uses = []
    for fingerprint in compromised:
        cluster_objects = await store.inventory.sealed_secrets_using_key(fingerprint)
        documents = await store.git.sealed_secrets_using_key(fingerprint)
        uses.append(CompromisedKeyUse(
            fingerprint=fingerprint, cluster_objects=tuple(sorted(cluster_objects)),
            git_documents=tuple(sorted((d.repo, d.path, d.document) for d in documents))))
    return uses
