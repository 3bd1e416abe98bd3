"""The fleet's key Secrets in one cluster: read what it holds, write a key, relabel one.

Writes are idempotent by construction: a key's Secret is named after its fingerprint
(:func:`sealfleet.domain.key_secrets.fleet_key_secret_name`), so writing a key again
finds the Secret the last attempt wrote.  Key material is never overwritten: a Secret
of that name holding anything else is an error, not an update.  And nothing is written
that the controller could not load as exactly that key (it crash-loops on an
unparseable ``active`` key Secret).

PEM parsing (milliseconds per key) runs on a thread, never on the event loop.  No
error message contains key material: fingerprints and names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from sealfleet.adapters.kube.client import AlreadyExists, KubeClient, NotFound, PatchType
from sealfleet.adapters.kube.controller import secrets_path
from sealfleet.domain import key_secrets
from sealfleet.domain.keys import DEFAULT_KEY_PREFIX, KEY_LABEL, KEY_LABEL_ACTIVE, SealingKey
from sealfleet.domain.planning.key_sync import HeldKey
from sealfleet.errors import InputError, PermanentError


class KeyMaterialConflict(PermanentError):
    """A Secret under the key's fleet name holds other key material: never overwritten."""


class Ensured(enum.StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"  # already there with this exact key material


@dataclasses.dataclass(frozen=True)
class EnsuredKeySecret:
    name: str
    outcome: Ensured
    label: str | None        # the key label it carries now (an existing one keeps its own)
    resource_version: str


@dataclasses.dataclass(frozen=True)
class KeyHoldings:
    """The key Secrets of a namespace: the parseable ones, and why the others are not."""

    held: tuple[HeldKey, ...]
    malformed: tuple[tuple[str, str], ...]  # (Secret name, reason)


def secret_path(namespace: str, name: str) -> str:
    return f"{secrets_path(namespace)}/{name}"


async def ensure_key_secret(client: KubeClient, namespace: str, key: SealingKey, job_id: str,
                            *, label: str = KEY_LABEL_ACTIVE,
                            key_prefix: str = DEFAULT_KEY_PREFIX) -> EnsuredKeySecret:
    """Make sure *key*'s fleet Secret exists in *namespace*; create it if absent.

    Checked before anything is sent (InputError): the manifest must read back, as the
    controller reads it, as *key* (see ``key_secrets.check_fleet_key_secret``).  A
    Secret already there with the same ``tls.crt``/``tls.key`` is left as it is (its
    label too: relabelling is :func:`set_key_label`'s); one with other material raises
    :class:`KeyMaterialConflict`.
    """
    manifest = await asyncio.to_thread(_checked_manifest, key, namespace, job_id, label,
                                       key_prefix)
    name = str(manifest["metadata"]["name"])
    path = secret_path(namespace, name)
    try:
        existing = await client.get_json(path)
    except NotFound:
        try:
            created = await client.create_json(secrets_path(namespace), manifest)
        except AlreadyExists:
            existing = await client.get_json(path)  # a concurrent writer won: compare
        else:
            return EnsuredKeySecret(name, Ensured.CREATED, label, _resource_version(created))
    if not key_secrets.same_key_material(existing, manifest):
        holds = await asyncio.to_thread(_fingerprint_of, existing)
        raise KeyMaterialConflict(
            f"Secret {namespace}/{name} exists and holds {holds}, not {key.fingerprint}; "
            "it is not overwritten")
    return EnsuredKeySecret(name, Ensured.UNCHANGED, _label(existing),
                            _resource_version(existing))


async def set_key_label(client: KubeClient, namespace: str, name: str, value: str, *,
                        resource_version: str | None = None,
                        key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """Set the key label of Secret *name* to *value* (merge patch); the new resourceVersion.

    With *resource_version*, only that version is relabelled (else ``Conflict``).  The
    Secret named exactly the controller's key prefix is loaded whatever its label, so
    taking its ``active`` label away would retire nothing: refused (InputError).
    """
    if value != KEY_LABEL_ACTIVE and name in (DEFAULT_KEY_PREFIX, key_prefix):
        raise InputError(f"Secret {namespace}/{name} is loaded by the controller whatever "
                         "its label: relabelling it does not retire its key")
    patched = await client.patch_json(
        secret_path(namespace, name), {"metadata": {"labels": {KEY_LABEL: value}}},
        patch_type=PatchType.MERGE, resource_version=resource_version)
    return _resource_version(patched)


async def read_key_secrets(client: KubeClient, namespace: str, *,
                           key_prefix: str = DEFAULT_KEY_PREFIX) -> list[dict[str, Any]]:
    """Every Secret of *namespace* with the key label (any value), and the legacy one
    named *key_prefix* (the controller loads it whatever its label)."""
    secrets: dict[str, dict[str, Any]] = {}
    async for page in client.list_pages(secrets_path(namespace), label_selector=KEY_LABEL):
        for item in page.items:
            secrets[str((item.get("metadata") or {}).get("name") or "")] = item
    if key_prefix not in secrets:
        with contextlib.suppress(NotFound):  # no legacy key Secret: the usual case
            secrets[key_prefix] = await client.get_json(secret_path(namespace, key_prefix))
    return list(secrets.values())


async def read_key_holdings(client: KubeClient, namespace: str, *,
                            key_prefix: str = DEFAULT_KEY_PREFIX) -> KeyHoldings:
    """:func:`read_key_secrets` read as key holdings for
    :mod:`~sealfleet.domain.planning.key_sync`."""
    secrets = await read_key_secrets(client, namespace, key_prefix=key_prefix)
    return await asyncio.to_thread(_holdings, secrets)


def _checked_manifest(key: SealingKey, namespace: str, job_id: str, label: str,
                      key_prefix: str) -> dict[str, Any]:
    manifest = key_secrets.fleet_key_secret_manifest(key, namespace=namespace, job_id=job_id,
                                                     label=label)
    key_secrets.check_fleet_key_secret(manifest, key.fingerprint, key_prefix=key_prefix)
    return manifest


def _fingerprint_of(secret: Mapping[str, Any]) -> str:
    try:
        return key_secrets.read_key_secret(secret).fingerprint
    except InputError:
        return "no readable key"


def _holdings(secrets: list[dict[str, Any]]) -> KeyHoldings:
    held: list[HeldKey] = []
    malformed: list[tuple[str, str]] = []
    for secret in sorted(secrets, key=lambda s: str(s["metadata"].get("name"))):
        name = str(secret["metadata"].get("name") or "")
        try:
            parsed = key_secrets.read_key_secret(secret)
        except InputError as exc:
            malformed.append((name, str(exc)))
            continue
        if parsed.problem is not None:
            malformed.append((name, parsed.problem))
            continue
        held.append(HeldKey(secret_name=name, fingerprint=parsed.fingerprint,
                            label=parsed.label, managed=key_secrets.is_managed(secret),
                            not_before=parsed.not_before, created=parsed.creation_timestamp))
    return KeyHoldings(tuple(held), tuple(malformed))


def _label(secret: Mapping[str, Any]) -> str | None:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    value = labels.get(KEY_LABEL) if isinstance(labels, Mapping) else None
    return str(value) if value is not None else None


def _resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
