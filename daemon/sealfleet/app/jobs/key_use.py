"""Which keys a cluster's SealedSecrets need *now*: a live list, attributed from cache.

The inventory can lag a cluster by a moment: a reseal that just rewrote every object
is seen by the collect side only as its watch events arrive.  Unloading a key on the
inventory's word alone in that moment (a key sync right after a reseal, say) could
take from the controller a key the objects it is about to unseal need.  So whatever
unloads a key first lists the cluster's SealedSecrets as they are and looks each item
up in the attribution cache by its hash (no RSA): an item sealed with a key needs it,
and an item with no answer yet might need any key.
"""

from __future__ import annotations

import dataclasses

from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.reseal_reads import list_objects
from sealfleet.domain import attribution, sealed_secrets


@dataclasses.dataclass(frozen=True)
class KeyUse:
    """What one cluster shows now."""

    needed: frozenset[str]                 # keys some item is sealed with
    unattributed: int                      # items no key is known to open (yet)
    using: dict[str, tuple[str, ...]]      # key -> namespace/name of the objects it seals

    def objects_using(self, fingerprint: str) -> tuple[str, ...]:
        return self.using.get(fingerprint, ())


async def live_key_use(ctx: JobContext, client: KubeClient, *,
                       none_is_unattributed: bool = False) -> KeyUse:
    """The keys *client*'s cluster's SealedSecrets need, from a list made now.

    An item cached as opening with no key the fleet knew is not any fleet key's; with
    *none_is_unattributed* it still counts as unattributed (a key sync, which may not
    know every key the controller holds, then unloads nothing)."""
    listed = await list_objects(client)
    hashes: dict[str, list[str]] = {}
    for ref, obj in listed.items():
        label = sealed_secrets.identity_of(obj).label
        hashes[ref] = [attribution.item_hash(v, label)
                       for v in sealed_secrets.encrypted_items(obj).values()]
    known = await ctx.store.inventory.get_attributions(
        [h for found in hashes.values() for h in found])
    unattributed = sum(1 for found in hashes.values() for h in found
                       if h not in known or (none_is_unattributed and known[h] is None))
    using: dict[str, set[str]] = {}
    for ref, found in hashes.items():
        for h in found:
            fingerprint = known.get(h)
            if fingerprint is not None:
                using.setdefault(fingerprint, set()).add(ref)
    return KeyUse(frozenset(using), unattributed,
                  {fp: tuple(sorted(refs)) for fp, refs in using.items()})
