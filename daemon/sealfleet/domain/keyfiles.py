"""Private keys from the files users hand to ``--recovery-private-key``.

A file may hold PEM RSA keys (PKCS#1 or PKCS#8, optionally next to their
certificates), one or more Secret documents with ``data["tls.key"]``, or a ``v1``
List of such Secrets (``kubectl get secret -o yaml``), as kubeseal accepts.  The same
reader serves ``keys fingerprint``, which also takes a bare certificate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sealfleet.domain.documents import parse_documents
from sealfleet.domain.key_secrets import load_key_secret
from sealfleet.domain.keys import (
    Certificate,
    SealingKey,
    fingerprint,
    load_certificate,
    load_private_key_pem,
    sealing_key_from_private_key,
)
from sealfleet.errors import InputError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class KeyIdentity:
    """What ``keys fingerprint`` reports for one key found in a file."""

    fingerprint: str
    kind: str            # "private key", "certificate" or "Secret"
    name: str | None     # namespace/name of a key Secret, None otherwise


def _pem_blocks(content: bytes) -> list[tuple[str, bytes]]:
    return [(match.group(1).decode(), match.group(0)) for match in _PEM_BLOCK.finditer(content)]


def _is_pem(content: bytes) -> bool:
    return content.lstrip().startswith(b"-----BEGIN ")


def keys_from_bytes(content: bytes, *, source: str) -> list[SealingKey]:
    """Every sealing key in *content*; errors name *source* and the document index."""
    if _is_pem(content):
        keys = _keys_from_pem(content, source)
    else:
        keys = [key for key, _ in _keys_from_documents(content, source)]
    if not keys:
        raise InputError(f"{source}: no private key found")
    return keys


def _keys_from_pem(content: bytes, source: str) -> list[SealingKey]:
    blocks = _pem_blocks(content)
    certificates: dict[str, Certificate] = {}
    for index, (kind, block) in enumerate(blocks):
        if kind == "CERTIFICATE":
            try:
                cert = load_certificate(block)
            except InputError as exc:
                raise InputError(f"{source}: PEM block {index}: {exc}") from None
            certificates.setdefault(cert.fingerprint, cert)
    keys: list[SealingKey] = []
    for index, (kind, block) in enumerate(blocks):
        if not kind.endswith("PRIVATE KEY"):
            continue
        if kind == "ENCRYPTED PRIVATE KEY":
            raise InputError(f"{source}: PEM block {index}: encrypted private keys are not "
                             "supported (decrypt it with openssl first)")
        try:
            private_key = load_private_key_pem(block)
        except InputError as exc:
            raise InputError(f"{source}: PEM block {index}: {exc}") from None
        # Pair the key with its certificate when the file carries it (tls.crt + tls.key).
        keys.append(sealing_key_from_private_key(
            private_key, certificates.get(fingerprint(private_key.public_key()))))
    return keys


def _keys_from_documents(content: bytes, source: str) -> list[tuple[SealingKey, str]]:
    docs = parse_documents(content, source=source)
    keys: list[tuple[SealingKey, str]] = []
    for index, doc in enumerate(docs):
        for secret in _secrets_in(doc, source, index):
            metadata = secret.get("metadata")
            metadata = metadata if isinstance(metadata, Mapping) else {}
            name = str(metadata.get("name") or "")
            namespace = str(metadata.get("namespace") or "")
            shown = f"{namespace}/{name}" if namespace and name else name
            try:
                keys.append((load_key_secret(secret), shown))
            except InputError as exc:
                where = f"document {index} ({shown})" if shown else f"document {index}"
                raise InputError(f"{source}: {where}: {exc}") from None
    return keys


def _secrets_in(doc: Mapping[str, Any], source: str, index: int) -> list[Mapping[str, Any]]:
    kind = doc.get("kind")
    if kind in ("List", "SecretList"):
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise InputError(f"{source}: document {index}: items is not a list")
        return [item for item in items if isinstance(item, Mapping)]
    if kind == "Secret":
        return [doc]
    raise InputError(f"{source}: document {index}: expected a Secret, a List or a PEM key, "
                     f"got kind {kind!r}")


def identities_from_bytes(content: bytes, *, source: str) -> list[KeyIdentity]:
    """The fingerprint of every key in a certificate, private key or key Secret file."""
    if not _is_pem(content):
        return [KeyIdentity(key.fingerprint, "Secret", name or None)
                for key, name in _keys_from_documents(content, source)] or _none(source)
    result: list[KeyIdentity] = []
    for index, (kind, block) in enumerate(_pem_blocks(content)):
        try:
            if kind == "CERTIFICATE":
                result.append(KeyIdentity(load_certificate(block).fingerprint, "certificate",
                                          None))
            elif kind in ("RSA PRIVATE KEY", "PRIVATE KEY"):
                key = load_private_key_pem(block)
                result.append(KeyIdentity(fingerprint(key.public_key()), "private key", None))
        except InputError as exc:
            raise InputError(f"{source}: PEM block {index}: {exc}") from None
    return result or _none(source)


def _none(source: str) -> list[KeyIdentity]:
    raise InputError(f"{source}: no certificate, private key or key Secret found")


def dedupe(keys: list[SealingKey]) -> list[SealingKey]:
    """Collapse keys by fingerprint, as the controller's key map does."""
    seen: dict[str, SealingKey] = {}
    for key in keys:
        seen.setdefault(key.fingerprint, key)
    return list(seen.values())
