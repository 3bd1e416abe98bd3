"""The reseal planner's inputs, read from the inventory and the keystore.

The planner (``domain.planning.resealing``) is pure: it takes plain records.  This
module is the one place that turns what the store knows into them: every configured
cluster's SealedSecrets (per-item key attribution, the GitOps tool that applied them,
the Git document of the same ciphertext), every configured repository's SealedSecret
documents, and the :class:`~sealfleet.domain.planning.resealing.Targets`: the key each
cluster seals with now (what its controller serves at ``/v1/cert.pem``, else its newest
active key: the inventory's ``sealing_key``), the newest fleet master key in master
mode, the compromised set.  Which private keys are held is decided per object when the
job runs (an object sealed with a key sealfleet does not hold goes through the
controller's ``/v1/rotate``), so the plan does not filter on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import ItemFact, SealedSecretRecord
from sealfleet.app.config import Settings
from sealfleet.app.keystore import Keystore
from sealfleet.domain.keys import most_recent_key
from sealfleet.domain.planning.resealing import (
    ClusterSealedSecret,
    GitOrigin,
    GitSealedSecret,
    ItemKey,
    Targets,
)


@dataclass(frozen=True)
class ResealInputs:
    """Everything the planner takes, as the inventory knows it now."""

    cluster_objects: Sequence[ClusterSealedSecret]
    git_documents: Sequence[GitSealedSecret]
    targets: Targets


def _items(facts: Sequence[ItemFact]) -> tuple[ItemKey, ...]:
    return tuple(ItemKey(f.item, f.fingerprint) for f in facts)


async def master_key(store: Store, keystore: Keystore) -> str | None:
    """The newest fleet master key by the controller's ordering (None: none yet)."""
    records = [r for r in await store.keys.list_keys() if r.fingerprint in keystore.master]
    newest = most_recent_key(records)
    return newest.fingerprint if newest is not None else None


async def load(store: Store, keystore: Keystore, settings: Settings, *,
               include_hinted: bool = False) -> ResealInputs:
    """The planner's inputs for every configured cluster and repository.

    *include_hinted*: an object whose only sign of a GitOps tool is the
    ``app.kubernetes.io/instance`` label (Helm sets it too) is taken as not managed,
    so it is resealed in the cluster; by default the planner treats the hint as
    management and never writes such an object in the cluster.
    """
    await keystore.refresh()
    configured = {c.name for c in settings.clusters}
    cluster_keys: dict[str, str | None] = dict.fromkeys(configured)
    for known in await store.inventory.list_clusters():
        if known.name in configured and not known.removed:
            cluster_keys[known.name] = known.sealing_key
    records: list[SealedSecretRecord] = []
    for name in sorted(configured):
        records.extend(await store.inventory.sealed_secrets_of_cluster(name))
    links = await store.git.links_for([(r.ciphertext_fingerprint, r.namespace, r.name)
                                       for r in records if r.items])
    objects = []
    for record in records:
        link = links.get((record.ciphertext_fingerprint, record.namespace, record.name))
        origin = GitOrigin(link.repo, link.path, link.document) if link is not None else None
        objects.append(ClusterSealedSecret(
            cluster=record.cluster, namespace=record.namespace, name=record.name,
            scope=record.scope, items=_items(record.items), state=record.state,
            managed_by=None if include_hinted and record.managed_by is not None
            and record.managed_by.hint else record.managed_by, origin=origin))
    documents = []
    for repo in settings.repos:
        for doc in await store.git.sealed_secrets_of_repo(repo.name):
            documents.append(GitSealedSecret(
                repo=doc.repo, path=doc.path, document=doc.document, namespace=doc.namespace,
                name=doc.name, scope=doc.scope, items=_items(doc.items),
                clusters=doc.clusters))
    master = await master_key(store, keystore) if settings.fleet.master else None
    targets = Targets(cluster_keys=cluster_keys,
                      repo_keys=dict.fromkeys(r.name for r in settings.repos),
                      master_key=master, compromised=keystore.compromised)
    return ResealInputs(objects, documents, targets)
