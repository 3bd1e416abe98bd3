"""The controller's key registry: which keys it holds, which one seals, when it renews.

Faithful to ``pkg/controller/main.go`` and ``keyregistry.go`` (see sealed-secrets.md §3):
keys are read once at start (Secrets labelled ``...sealed-secrets-key=active`` in the
controller namespace, plus the legacy Secret named exactly the prefix whatever its
labels), sorted by creationTimestamp at whole-second resolution, and registered one by
one; the map is keyed by fingerprint (duplicates collapse) and the "most recent" key is
replaced only by a strictly later ordering time: certificate NotBefore by default, the
Secret's creationTimestamp with ``SecretCreationTimestamp``, ``now`` for keys the
controller generates itself.  A key Secret that does not parse crashes the controller at
start, as the real one panics on ``certs[0]`` of a nil slice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from sealfleet.domain import key_secrets
from sealfleet.domain import keys as keys_domain
from sealfleet.errors import InputError
from sealfleet.sandbox.controller.flags import ORDER_BY_CREATION, ControllerFlags
from sealfleet.sandbox.objects import ApiError, ObjectStore


class ControllerCrash(Exception):
    """The emulated controller process dies (the Pod goes into CrashLoopBackOff)."""


@dataclasses.dataclass(frozen=True)
class RegisteredKey:
    key: keys_domain.SealingKey
    ordering_time: dt.datetime
    secret_name: str


def parse_timestamp(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.fromtimestamp(0, dt.UTC)
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def key_secret_selected(secret: Mapping[str, Any], prefix: str) -> bool:
    """Would the controller load this Secret at start?"""
    metadata = secret.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return bool(
        labels.get(keys_domain.KEY_LABEL) == keys_domain.KEY_LABEL_ACTIVE
        or metadata.get("name") == prefix
    )


# Parsing a 4096-bit PEM key costs milliseconds (cryptography checks the key), and a
# sandbox of 20 clusters parses 80 of them at every start.  Parsing is deterministic, so
# results are memoised by a digest of the Secret's data (bounded; private to the process).
_PARSED: dict[bytes, keys_domain.SealingKey] = {}
_PARSED_LIMIT = 4096


def _data_digest(data: Mapping[str, Any]) -> bytes:
    digest = hashlib.sha256(str(data.get("tls.key", "")).encode())
    digest.update(b"\0" + str(data.get("tls.crt", "")).encode())
    return digest.digest()


def remember_parsed(secret: Mapping[str, Any], key: keys_domain.SealingKey) -> None:
    """Record that this key Secret parses to *key* (the seed knows it already)."""
    if len(_PARSED) >= _PARSED_LIMIT:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[_data_digest(secret.get("data") or {})] = key


def parse_key_secret(secret: Mapping[str, Any]) -> keys_domain.SealingKey:
    """Read a key Secret as ``readKey`` does; a parse failure is a crash (a panic upstream)."""
    name = (secret.get("metadata") or {}).get("name", "?")
    data = secret.get("data") or {}
    cached = _PARSED.get(_data_digest(data))
    if cached is not None:
        return cached
    if not data.get("tls.crt"):
        raise ControllerCrash(f"panic: index out of range [0] with length 0 "
                              f"(key Secret {name!r} has no certificate)")
    try:
        key = key_secrets.load_key_secret(secret)
    except InputError as exc:
        raise ControllerCrash(f"panic: index out of range [0] with length 0 "
                              f"(key Secret {name!r}: {exc})") from None
    remember_parsed(secret, key)
    return key


class KeyRegistry:
    """The keys one controller process holds (lost on restart, as upstream)."""

    def __init__(self, flags: ControllerFlags) -> None:
        self._flags = flags
        self._keys: dict[str, RegisteredKey] = {}
        self._most_recent: RegisteredKey | None = None

    @property
    def keys(self) -> list[keys_domain.SealingKey]:
        return [registered.key for registered in self._keys.values()]

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(self._keys)

    def likeliest_first(self, hint: str | None) -> list[keys_domain.SealingKey]:
        """Every key in the order an unseal tries them: *hint* (the key that opened the
        last SealedSecret) first, then the newest first.  Upstream tries them in Go map
        order, which is random, so every order is one the real controller may take; this
        one spares the failing RSA decrypts of trying old keys on freshly sealed items."""
        ordered = sorted(self._keys.values(), key=lambda r: r.ordering_time, reverse=True)
        keys = [registered.key for registered in ordered]
        if hint is not None and hint in self._keys and keys[0].fingerprint != hint:
            keys.insert(0, keys.pop(next(i for i, k in enumerate(keys) if k.fingerprint == hint)))
        return keys

    @property
    def most_recent(self) -> RegisteredKey | None:
        return self._most_recent

    def register_secret(self, secret: Mapping[str, Any]) -> RegisteredKey:
        key = parse_key_secret(secret)
        metadata = secret.get("metadata") or {}
        if self._flags.key_order_priority == ORDER_BY_CREATION:
            ordering = parse_timestamp(metadata.get("creationTimestamp"))
        else:
            ordering = key.not_before
        return self.register(key, ordering, str(metadata.get("name", "")))

    def register(
        self, key: keys_domain.SealingKey, ordering_time: dt.datetime, secret_name: str
    ) -> RegisteredKey:
        registered = RegisteredKey(key, ordering_time, secret_name)
        self._keys[key.fingerprint] = registered
        if self._most_recent is None or ordering_time > self._most_recent.ordering_time:
            self._most_recent = registered
        return registered

    def needs_key_at_start(self, now: dt.datetime) -> bool:
        """No keys at all, or the newest is older than the cutoff: generate one now."""
        if self._most_recent is None:
            return True
        cutoff = self._flags.key_cutoff_time
        return cutoff is not None and self._most_recent.ordering_time < cutoff

    def first_renewal_delay(self, now: dt.datetime) -> dt.timedelta | None:
        """period - age of the newest key, floored at 0; None when renewal is off."""
        period = self._flags.key_renew_period
        if period <= dt.timedelta(0):
            return None
        if self._most_recent is None:
            return period
        age = now - self._most_recent.ordering_time
        return max(period - age, dt.timedelta(0))


def write_new_key(
    store: ObjectStore, namespace: str, flags: ControllerFlags, key: keys_domain.SealingKey
) -> str:
    """Create the key Secret exactly as ``writeKey`` does (generateName = prefix)."""
    manifest = keys_domain.key_secret_manifest(key, namespace=namespace, prefix=flags.key_prefix)
    try:
        created = store.create("secrets", namespace, manifest)
    except ApiError as exc:
        raise ControllerCrash(f"failed to write new key: {exc.message}") from None
    return str(created["metadata"]["name"])
