"""What a sandbox's clusters show, read straight from their object stores, for the
end-to-end reseal tests: the SealedSecrets, a digest of each Secret the controllers
wrote (never a value), whether an object opens with a key, whether it is Synced."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from sealfleet.adapters.kube import fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app import config
from sealfleet.app.jobs import reseal_cluster
from sealfleet.domain import hybrid, sealed_secrets
from sealfleet.domain.keys import SealingKey
from sealfleet.sandbox import Sandbox

SEALED = "sealedsecrets.bitnami.com"
VOLATILE = ("resourceVersion", "generation", "managedFields")


def sealed_objects(sandbox: Sandbox) -> dict[tuple[str, str, str], dict[str, Any]]:
    found = {}
    for name, cluster in sandbox.clusters.items():
        objects, _ = cluster.store.list(SEALED, None)
        for obj in objects:
            meta = obj["metadata"]
            found[(name, meta["namespace"], meta["name"])] = copy.deepcopy(obj)
    return found


def unsealed(sandbox: Sandbox) -> dict[tuple[str, str, str], str]:
    """A digest of the data of every Secret the controllers wrote (never the values)."""
    found = {}
    for (name, namespace, secret), _ in sealed_objects(sandbox).items():
        try:
            data = sandbox.cluster(name).store.get("secrets", namespace, secret).get("data")
        except Exception:  # noqa: S112 - a SealedSecret whose Secret is not there (yet)
            continue
        found[(name, namespace, secret)] = hashlib.sha256(
            json.dumps(data, sort_keys=True).encode()).hexdigest()
    return found


def unchanged_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything a reseal must leave as it is: metadata but what the server bumps, the
    template, the item names."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in VOLATILE}
    spec = obj["spec"]
    return {"metadata": meta, "template": spec.get("template"),
            "items": sorted(spec.get("encryptedData") or {})}


def opens_with(obj: dict[str, Any], key: SealingKey) -> bool:
    """Every item opens with *key* alone, under the object's own label."""
    label = sealed_secrets.identity_of(obj).label
    try:
        for item, value in sealed_secrets.encrypted_items(obj).items():
            hybrid.decrypt_with_index([key.private_key], sealed_secrets.decode_item(item, value),
                                      label)
    except Exception:
        return False
    return True


def synced_now(obj: dict[str, Any]) -> bool:
    observed, status, _ = reseal_cluster.synced_state(obj)
    return status == "True" and observed == obj["metadata"]["generation"]


def resealable(sandbox: Sandbox) -> set[tuple[str, str, str]]:
    """The seeded SealedSecrets whose items all open with a key of their cluster."""
    seed = json.loads(sandbox.seed_file.read_text())
    return {(e["cluster"], e["namespace"], e["name"]) for e in seed["sealed_secrets"]
            if all(i["key"] for i in e["items"]) and "broken" not in e["name"]}


async def key_labels(settings: config.Settings, fingerprint: str) -> dict[str, set[str | None]]:
    """Per cluster holding *fingerprint*: the labels of its key Secrets, as the cluster's
    API shows them (read with the production client)."""
    found: dict[str, set[str | None]] = {}
    for cluster in settings.clusters:
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=5) as client:
            held = await fleet_keys.read_key_holdings(client, cluster.controller_namespace)
        labels = {h.label for h in held.held if h.fingerprint == fingerprint}
        if labels:
            found[cluster.name] = labels
    return found
