"""Private keys from the files users hand to ``--recovery-private-key``.

A file may hold a PEM RSA key (PKCS#1 or PKCS#8), one or more Secret documents with
``data["tls.key"]``, or a ``v1`` List of such Secrets (``kubectl get secret -o yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sealfleet.domain.documents import parse_documents
from sealfleet.domain.keys import (
    SealingKey,
    key_from_secret,
    load_private_key_pem,
    sealing_key_from_private_key,
)
from sealfleet.errors import InputError


def keys_from_bytes(content: bytes, *, source: str) -> list[SealingKey]:
    """Every sealing key in *content*; errors name *source* and the document index."""
    if b"-----BEGIN" in content and b"PRIVATE KEY-----" in content:
        try:
            return [sealing_key_from_private_key(load_private_key_pem(content))]
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
    docs = parse_documents(content, source=source)
    keys: list[SealingKey] = []
    for index, doc in enumerate(docs):
        for secret in _secrets_in(doc, source, index):
            try:
                keys.append(key_from_secret(secret))
            except InputError as exc:
                name = (secret.get("metadata") or {}).get("name", "?")
                raise InputError(f"{source}: document {index} ({name}): {exc}") from None
    if not keys:
        raise InputError(f"{source}: no private key found")
    return keys


def _secrets_in(doc: Mapping[str, Any], source: str, index: int) -> list[Mapping[str, Any]]:
    kind = doc.get("kind")
    if kind == "List" or kind == "SecretList":
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise InputError(f"{source}: document {index}: items is not a list")
        return [item for item in items if isinstance(item, Mapping)]
    if kind == "Secret":
        return [doc]
    raise InputError(f"{source}: document {index}: expected a Secret, a List or a PEM key, "
                     f"got kind {kind!r}")


def dedupe(keys: list[SealingKey]) -> list[SealingKey]:
    """Collapse keys by fingerprint, as the controller's key map does."""
    seen: dict[str, SealingKey] = {}
    for key in keys:
        seen.setdefault(key.fingerprint, key)
    return list(seen.values())
