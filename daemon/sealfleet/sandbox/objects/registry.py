"""Registry rules of the real apiserver that apply on every write, whoever the writer is.

Name validation, Secret normalization (``stringData`` folded into base64 ``data``,
``data`` must be base64, ``immutable`` Secrets refuse data changes, 1 MiB limit),
namespace defaults, and when ``metadata.generation`` moves.
"""

from __future__ import annotations

import base64
import binascii
import re

from sealfleet.sandbox.objects.errors import Causes, Obj, bad_request, invalid
from sealfleet.sandbox.objects.resources import ResourceType

SECRET_MAX_BYTES = 1024 * 1024

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def validate(rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
    meta = obj["metadata"]
    name = str(meta.get("name", ""))
    causes: Causes = []
    if rtype.plural in ("namespaces",):
        pattern, what = _DNS_LABEL, "RFC 1123 label"
    elif rtype.plural == "services":
        pattern, what = _DNS_1035_LABEL, "RFC 1035 label"
    else:
        pattern, what = _DNS_SUBDOMAIN, "RFC 1123 subdomain"
    limit = 63 if pattern is not _DNS_SUBDOMAIN else 253
    if len(name) > limit or not pattern.match(name):
        causes.append(
            (
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                "alphanumeric characters or '-'",
            )
        )
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is not None and (
            not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
        ):
            causes.append(
                (
                    f"metadata.{field}",
                    "FieldValueInvalid",
                    "Invalid value: must be a map of strings",
                )
            )
    if rtype.plural == "secrets":
        causes.extend(_secret_causes(obj, old))
    if causes:
        raise invalid(rtype, name, causes)


def _secret_causes(obj: Obj, old: Obj | None) -> Causes:
    causes: Causes = []
    string_data = obj.pop("stringData", None) or {}
    data = obj.get("data") or {}
    if not isinstance(data, dict) or not isinstance(string_data, dict):
        raise bad_request(
            'Secret in version "v1" cannot be handled as a Secret: data must be a map'
        )
    total = 0
    for key, value in data.items():
        if not isinstance(value, str):
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: data[{key}] is not a string'
            )
        try:
            total += len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(
                'Secret in version "v1" cannot be handled as a Secret: illegal base64 data'
                f" in data[{key}]"
            ) from None
    for key, value in string_data.items():
        encoded = base64.b64encode(str(value).encode()).decode()
        data[key] = encoded
        total += len(str(value).encode())
    if data:
        obj["data"] = data
    for key in data:
        if not _SECRET_KEY.match(key) or key in (".", ".."):
            causes.append(
                (
                    f"data[{key}]",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": a valid config key must consist of '
                    "alphanumeric characters, '-', '_' or '.'",
                )
            )
    if total > SECRET_MAX_BYTES:
        causes.append(
            (
                "data",
                "FieldValueTooLong",
                f"Too long: must have at most {SECRET_MAX_BYTES} bytes",
            )
        )
    obj.setdefault("type", "Opaque")
    if old is not None:
        if obj["type"] != old.get("type", "Opaque"):
            causes.append(
                (
                    "type",
                    "FieldValueInvalid",
                    f'Invalid value: "{obj["type"]}": field is immutable',
                )
            )
        if old.get("immutable"):
            if (obj.get("data") or {}) != (old.get("data") or {}):
                causes.append(
                    (
                        "data",
                        "FieldValueForbidden",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
            if not obj.get("immutable"):
                causes.append(
                    (
                        "immutable",
                        "FieldValueForbidden",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
    return causes


def prepare_for_create(rtype: ResourceType, obj: Obj) -> None:
    if rtype.plural == "namespaces":
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif rtype.has_status and rtype.plural != "pods":
        obj.pop("status", None)  # status is written through /status only


def prepare_for_update(rtype: ResourceType, new: Obj, old: Obj) -> None:
    if rtype.plural == "namespaces":
        new["spec"] = old.get("spec", {})
        labels = new["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = new["metadata"]["name"]


def generation_changes(rtype: ResourceType, new: Obj, old: Obj) -> bool:
    if rtype.generation == "custom":
        strip = ("metadata", "status", "kind", "apiVersion")
        return {k: v for k, v in new.items() if k not in strip} != {
            k: v for k, v in old.items() if k not in strip
        }
    changed = bool(new.get("spec") != old.get("spec"))
    if rtype.generation == "spec+annotations":
        changed = changed or new["metadata"].get("annotations") != old["metadata"].get(
            "annotations"
        )
    return changed
