"""Secrets in, SealedSecrets out, and back: the manifest layout kubeseal and the
controller use, on top of :mod:`sealfleet.domain.hybrid`.

Everything here is pure and synchronous.  Errors name the object and the item, never
a value.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import hybrid
from sealfleet.domain.scopes import (
    Scope,
    encryption_label,
    scope_from_annotations,
    with_scope_annotations,
)
from sealfleet.errors import DecryptionError, InputError

API_VERSION = "bitnami.com/v1alpha1"
KIND = "SealedSecret"
# Server-side and client-side bookkeeping kubeseal strips before sealing.
_SERVER_SIDE_METADATA = ("uid", "resourceVersion", "selfLink", "generation", "managedFields",
                         "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences")
_LAST_APPLIED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",
                             "kubecfg.ksonnet.io/last-applied-configuration")
# kubeseal prints Go structs: metadata fields come in ObjectMeta's declaration order,
# and encoding/json writes every map (labels, annotations) with its keys sorted.
_OBJECT_META_ORDER = ("name", "generateName", "namespace", "selfLink", "uid",
                      "resourceVersion", "generation", "creationTimestamp",
                      "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
                      "annotations", "ownerReferences", "finalizers", "managedFields")


class ItemsDecryptionError(DecryptionError):
    """Some items of one SealedSecret could not be decrypted with any key."""

    def __init__(self, object_name: str, items: Sequence[str]) -> None:
        self.items = list(items)
        shown = ", ".join(repr(i) for i in self.items)
        super().__init__(f"{object_name}: no key could decrypt item(s) {shown}")


@dataclass(frozen=True)
class SealedIdentity:
    """What the OAEP label of a SealedSecret is computed from (top-level metadata only)."""

    namespace: str
    name: str
    scope: Scope

    @property
    def label(self) -> bytes:
        return encryption_label(self.scope, self.namespace, self.name)

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _metadata(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise InputError("metadata is not a mapping")
    return metadata


def go_object_meta(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """*metadata* with its fields in the order kubeseal's Go output has them."""
    ordered = {key: metadata[key] for key in _OBJECT_META_ORDER if key in metadata}
    ordered.update((key, value) for key, value in metadata.items() if key not in ordered)
    for key in ("labels", "annotations"):
        value = ordered.get(key)
        if isinstance(value, Mapping):
            ordered[key] = dict(sorted(value.items(), key=lambda kv: str(kv[0])))
    return ordered


def identity_of(sealed: Mapping[str, Any]) -> SealedIdentity:
    metadata = _metadata(sealed)
    annotations = metadata.get("annotations") or {}
    return SealedIdentity(namespace=str(metadata.get("namespace") or ""),
                          name=str(metadata.get("name") or ""),
                          scope=scope_from_annotations(annotations))


def secret_values(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """The raw values of a Secret: ``data`` decoded, then ``stringData`` on top (it wins,
    as the API server merges it)."""
    values: dict[str, bytes] = {}
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(string_data, Mapping):
        raise InputError("data and stringData must be mappings")
    for item, encoded in data.items():
        if encoded is not None and not isinstance(encoded, str):
            raise InputError(f"item {item!r}: data value must be a base64 string")
        try:
            values[str(item)] = base64.b64decode(encoded or "", validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"item {item!r}: data value is not valid base64") from None
    for item, text in string_data.items():
        # The API server (and kubeseal's Go types) reject non-string values; guessing
        # how a YAML boolean or number should be spelled would change the secret.
        if text is not None and not isinstance(text, str):
            raise InputError(f"item {item!r}: stringData value must be a string (quote it)")
        values[str(item)] = (text or "").encode()
    return values


def seal_value(public_key: rsa.RSAPublicKey, value: bytes, identity: SealedIdentity) -> str:
    """One ``encryptedData`` value: standard base64, padded, one line."""
    return base64.b64encode(hybrid.encrypt(public_key, value, identity.label)).decode()


def seal_secret(secret: Mapping[str, Any], public_key: rsa.RSAPublicKey, *,
                namespace: str | None = None, name: str | None = None,
                scope: Scope | None = None, allow_empty_data: bool = False) -> dict[str, Any]:
    """Seal a Secret into a SealedSecret laid out as kubeseal lays it out.

    *namespace* fills in a missing namespace (an explicit one that disagrees with the
    input is an error, as in kubeseal); *name* overrides the name; a non-strict *scope*
    rewrites the input's scope annotations, while strict (kubeseal's default) leaves them.
    """
    if secret.get("kind", "Secret") != "Secret":
        raise InputError(f"expected kind Secret, got {secret.get('kind')!r}")
    template_meta: dict[str, Any] = copy.deepcopy(dict(_metadata(secret)))
    input_namespace = template_meta.get("namespace") or ""
    if namespace and input_namespace and namespace != input_namespace:
        raise InputError(f"namespace mismatch: input is {input_namespace!r}, "
                         f"--namespace is {namespace!r}")
    if not input_namespace and namespace:
        template_meta["namespace"] = namespace
    if name:
        template_meta["name"] = name
    for key in _SERVER_SIDE_METADATA:
        template_meta.pop(key, None)
    template_meta["creationTimestamp"] = None
    annotations = {k: v for k, v in (template_meta.get("annotations") or {}).items()
                   if k not in _LAST_APPLIED_ANNOTATIONS}
    if scope is not None and scope is not Scope.STRICT:
        annotations = with_scope_annotations(annotations, scope)
    if annotations:
        template_meta["annotations"] = annotations
    else:
        template_meta.pop("annotations", None)
    effective_scope = scope_from_annotations(annotations)
    identity = SealedIdentity(namespace=str(template_meta.get("namespace") or ""),
                              name=str(template_meta.get("name") or ""), scope=effective_scope)
    if effective_scope is not Scope.CLUSTER_WIDE and not identity.namespace:
        raise InputError("the Secret has no namespace: set metadata.namespace or --namespace")
    if effective_scope is Scope.STRICT and not identity.name:
        raise InputError("the Secret has no name: set metadata.name or --name")

    values = secret_values(secret)
    if not values and not allow_empty_data:
        raise InputError("the Secret has no data and no stringData (use --allow-empty-data)")

    top_meta: dict[str, Any] = {"name": identity.name}
    if identity.namespace:
        top_meta["namespace"] = identity.namespace
    top_meta["creationTimestamp"] = None
    scope_annotations = with_scope_annotations(None, effective_scope)
    if scope_annotations:
        top_meta["annotations"] = scope_annotations
    template: dict[str, Any] = {"metadata": go_object_meta(template_meta)}
    if secret.get("type"):
        template["type"] = secret["type"]
    if secret.get("immutable") is not None:
        template["immutable"] = secret["immutable"]
    return {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": top_meta,
        "spec": {
            "template": template,
            "encryptedData": {item: seal_value(public_key, values[item], identity)
                              for item in sorted(values)},
        },
    }


def encrypted_items(sealed: Mapping[str, Any]) -> dict[str, str]:
    """``spec.encryptedData`` as item -> base64 ciphertext: the one reader of it (the CLI
    and the inventory alike).  InputError names the field or item, never a value."""
    spec = sealed.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InputError("spec is not a mapping")
    encrypted = spec.get("encryptedData") or {}
    if not isinstance(encrypted, Mapping):
        raise InputError("spec.encryptedData is not a mapping")
    values: dict[str, str] = {}
    for item, value in encrypted.items():
        if not isinstance(value, str):
            raise InputError(f"item {str(item)!r}: value is not a string")
        values[str(item)] = value
    return values


def decode_item(item: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"item {item!r}: encryptedData value is not valid base64") from None


def decrypt_items(sealed: Mapping[str, Any],
                  private_keys: Sequence[rsa.RSAPrivateKey]) -> dict[str, bytes]:
    """Decrypt every item (or the legacy ``spec.data`` blob), trying every key per item.

    Raises :class:`ItemsDecryptionError` naming all items that no key opens.
    """
    identity = identity_of(sealed)
    spec = sealed.get("spec") or {}
    encrypted = encrypted_items(sealed)
    legacy = spec.get("data") if isinstance(spec, Mapping) else None
    if encrypted and legacy:
        raise InputError(f"{identity.display}: uses both spec.encryptedData and spec.data")
    if legacy:
        return secret_values(_decrypt_legacy(identity, str(legacy), private_keys))
    values: dict[str, bytes] = {}
    failed: list[str] = []
    # Items of one SealedSecret are nearly always sealed by the same key: trying the
    # key that opened the previous item first keeps the common case at one RSA decrypt.
    order = list(private_keys)
    for item, value in encrypted.items():
        try:
            index, values[item] = hybrid.decrypt_with_index(order, decode_item(item, value),
                                                            identity.label)
        except DecryptionError:
            failed.append(item)
            continue
        if index:
            order.insert(0, order.pop(index))
    if failed:
        raise ItemsDecryptionError(identity.display, failed)
    return values


def failing_items(sealed: Mapping[str, Any],
                  private_keys: Sequence[rsa.RSAPrivateKey]) -> dict[str, str]:
    """Every item that does not decrypt, with the reason (never a value): for ``validate``.

    Unlike :func:`decrypt_items` this keeps going past a malformed item, so one run
    names every problem in the document.
    """
    identity = identity_of(sealed)
    spec = sealed.get("spec") or {}
    legacy = spec.get("data") if isinstance(spec, Mapping) else None
    items = dict(encrypted_items(sealed))
    if legacy:
        items["spec.data"] = str(legacy)
    problems: dict[str, str] = {}
    order = list(private_keys)
    for item, value in items.items():
        try:
            index, _ = hybrid.decrypt_with_index(order, decode_item(item, value), identity.label)
        except InputError:
            problems[item] = "not valid base64"
        except hybrid.MalformedCiphertextError:
            problems[item] = "too short to be a sealed value"
        except DecryptionError:
            problems[item] = "no key could decrypt it"
        else:
            if index:
                order.insert(0, order.pop(index))
    return problems


def _decrypt_legacy(identity: SealedIdentity, blob: str,
                    private_keys: Sequence[rsa.RSAPrivateKey]) -> dict[str, Any]:
    """The whole Secret a legacy (pre-``encryptedData``) SealedSecret carries in ``spec.data``."""
    try:
        plaintext = hybrid.decrypt(private_keys, decode_item("spec.data", blob), identity.label)
    except DecryptionError:
        raise ItemsDecryptionError(identity.display, ["spec.data"]) from None
    try:
        inner = json.loads(plaintext)
    except ValueError:
        inner = None
    if not isinstance(inner, dict):
        raise InputError(f"{identity.display}: spec.data does not hold a JSON Secret")
    return inner


def unseal(sealed: Mapping[str, Any],
           private_keys: Sequence[rsa.RSAPrivateKey]) -> dict[str, Any]:
    """The Secret the controller would produce from *sealed* (with the same keys).

    As in the controller, a legacy ``spec.data`` SealedSecret yields the Secret sealed
    inside it (its labels, annotations and type); otherwise the template gives them.
    Either way name and namespace come from the SealedSecret.
    """
    identity = identity_of(sealed)
    spec = sealed.get("spec") or {}
    legacy = spec.get("data") if isinstance(spec, Mapping) else None
    if legacy and not encrypted_items(sealed):
        template: Mapping[str, Any] = _decrypt_legacy(identity, str(legacy), private_keys)
        values = secret_values(template)
        generated: Mapping[str, Any] = {}
    else:
        values = decrypt_items(sealed, private_keys)
        template = spec.get("template") or {}
        generated = template.get("data") or {}
    inner_meta = template.get("metadata") or {}
    if not isinstance(inner_meta, Mapping):
        raise InputError(f"{identity.display}: template metadata is not a mapping")
    metadata: dict[str, Any] = copy.deepcopy(dict(inner_meta))
    metadata.pop("creationTimestamp", None)
    metadata["name"] = identity.name
    if identity.namespace:
        metadata["namespace"] = identity.namespace
    top = _metadata(sealed)
    annotations = metadata.get("annotations") or {}
    skip_owner = annotations.get("sealedsecrets.bitnami.com/skip-set-owner-references") == "true"
    if top.get("uid") and not skip_owner:
        metadata["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": KIND,
                                        "name": identity.name, "uid": top["uid"],
                                        "controller": True}]
    data = {item: base64.b64encode(value).decode() for item, value in sorted(values.items())}
    for item, text in generated.items():
        if "{{" in str(text):
            raise InputError(f"{identity.display}: template data {item!r} uses Go templates, "
                             "which sealfleet does not render")
        data[item] = base64.b64encode(str(text).encode()).decode()
    # v1.Secret's field order, as kubeseal prints it.
    secret: dict[str, Any] = {"kind": "Secret", "apiVersion": "v1",
                              "metadata": go_object_meta(metadata)}
    if template.get("immutable") is not None:
        secret["immutable"] = template["immutable"]
    secret["data"] = dict(sorted(data.items()))
    if template.get("type"):
        secret["type"] = template["type"]
    return secret


def reencrypt(sealed: Mapping[str, Any], private_keys: Sequence[rsa.RSAPrivateKey],
              new_public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """Re-seal every item with *new_public_key*, keeping scope, metadata and item names.

    Offline equivalent of the controller's ``/v1/rotate``: the document is returned
    otherwise unchanged.  A legacy ``spec.data`` SealedSecret becomes ``encryptedData``
    plus a template made from the Secret sealed inside it, as the controller's rotation
    does, so its labels, annotations and type survive.
    """
    identity = identity_of(sealed)
    spec_in = sealed.get("spec") or {}
    legacy = spec_in.get("data") if isinstance(spec_in, Mapping) else None
    legacy_template: dict[str, Any] | None = None
    if legacy and not encrypted_items(sealed):
        inner = _decrypt_legacy(identity, str(legacy), private_keys)
        values = secret_values(inner)
        legacy_template = _template_from_secret(inner, identity)
    else:
        values = decrypt_items(sealed, private_keys)
    # Item order is kept (GitOps diffs stay minimal); the old ciphertext is not copied,
    # only replaced, which matters when resealing a whole fleet.
    resealed = {item: seal_value(new_public_key, values[item], identity) for item in values}
    spec: dict[str, Any] = {}
    for key, value in (sealed.get("spec") or {}).items():
        if key in ("encryptedData", "data"):
            spec["encryptedData"] = resealed
        else:
            spec[key] = copy.deepcopy(value)
    spec.setdefault("encryptedData", resealed)
    if legacy_template is not None:
        spec = {"template": legacy_template, **{k: v for k, v in spec.items() if k != "template"}}
    result = {key: spec if key == "spec" else copy.deepcopy(value)
              for key, value in sealed.items()}
    result.setdefault("spec", spec)
    return result


def _template_from_secret(secret: Mapping[str, Any], identity: SealedIdentity) -> dict[str, Any]:
    """``spec.template`` for *secret* sealed as *identity*: its metadata without
    server-side fields, named and scoped like the SealedSecret."""
    raw_meta = secret.get("metadata") or {}
    if not isinstance(raw_meta, Mapping):
        raise InputError(f"{identity.display}: the sealed Secret's metadata is not a mapping")
    metadata = {k: copy.deepcopy(v) for k, v in raw_meta.items()
                if k not in _SERVER_SIDE_METADATA}
    metadata["name"] = identity.name
    if identity.namespace:
        metadata["namespace"] = identity.namespace
    else:
        metadata.pop("namespace", None)
    metadata["creationTimestamp"] = None
    annotations = with_scope_annotations(
        {k: v for k, v in (metadata.get("annotations") or {}).items()
         if k not in _LAST_APPLIED_ANNOTATIONS}, identity.scope)
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    template: dict[str, Any] = {"metadata": go_object_meta(metadata)}
    if secret.get("type"):
        template["type"] = secret["type"]
    if secret.get("immutable") is not None:
        template["immutable"] = secret["immutable"]
    return template


def ciphertext_fingerprint(encrypted_data: Mapping[str, str]) -> str:
    """SHA-256 over the sorted ``encryptedData``: ``name NUL value LF`` per item, hex.

    Changes whenever any item is added, removed, renamed or resealed; equal for equal
    ciphertext regardless of map order.
    """
    digest = hashlib.sha256()
    for item in sorted(encrypted_data):
        digest.update(item.encode())
        digest.update(b"\0")
        digest.update(str(encrypted_data[item]).encode())
        digest.update(b"\n")
    return digest.hexdigest()
