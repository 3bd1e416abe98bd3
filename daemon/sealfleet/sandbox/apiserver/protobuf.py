"""Decoding the Kubernetes protobuf request bodies kubectl sends for built-in kinds.

kubectl's typed clients (``kubectl create secret generic``, ``kubectl create namespace``,
``kubectl create service``) POST ``application/vnd.kubernetes.protobuf``: the magic
``k8s\\x00`` followed by a ``runtime.Unknown`` envelope whose ``raw`` field holds the object
in the generated protobuf of k8s.io/api.  The schemas below cover the messages of those
commands (field numbers from k8s.io/api ``generated.proto``); anything else is answered
415, as a server that does not speak protobuf would.  Responses are always JSON, which
every client accepts.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from sealfleet.sandbox.objects import ApiError

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A field: (json name, kind, nested schema name or None, repeated)
# kinds: string, bytes, int, bool, message, map_ss (map<string,string>), map_sb (map<string,bytes>),
# time (meta.v1.Time), intorstr.
Field = tuple[str, str, str | None, bool]

SCHEMAS: dict[str, dict[int, Field]] = {
    "Unknown": {
        1: ("typeMeta", "message", "TypeMeta", False),
        2: ("raw", "bytes", None, False),
        3: ("contentEncoding", "string", None, False),
        4: ("contentType", "string", None, False),
    },
    "TypeMeta": {1: ("apiVersion", "string", None, False), 2: ("kind", "string", None, False)},
    "ObjectMeta": {
        1: ("name", "string", None, False),
        2: ("generateName", "string", None, False),
        3: ("namespace", "string", None, False),
        5: ("uid", "string", None, False),
        6: ("resourceVersion", "string", None, False),
        7: ("generation", "int", None, False),
        8: ("creationTimestamp", "time", None, False),
        11: ("labels", "map_ss", None, False),
        12: ("annotations", "map_ss", None, False),
        13: ("ownerReferences", "message", "OwnerReference", True),
        14: ("finalizers", "string", None, True),
    },
    "OwnerReference": {
        1: ("kind", "string", None, False),
        3: ("name", "string", None, False),
        4: ("uid", "string", None, False),
        5: ("apiVersion", "string", None, False),
        6: ("controller", "bool", None, False),
        7: ("blockOwnerDeletion", "bool", None, False),
    },
    "Secret": {
        1: ("metadata", "message", "ObjectMeta", False),
        2: ("data", "map_sb", None, False),
        3: ("type", "string", None, False),
        4: ("stringData", "map_ss", None, False),
        5: ("immutable", "bool", None, False),
    },
    "Namespace": {
        1: ("metadata", "message", "ObjectMeta", False),
        2: ("spec", "message", "NamespaceSpec", False),
        3: ("status", "message", "NamespaceStatus", False),
    },
    "NamespaceSpec": {1: ("finalizers", "string", None, True)},
    "NamespaceStatus": {1: ("phase", "string", None, False)},
    "Service": {
        1: ("metadata", "message", "ObjectMeta", False),
        2: ("spec", "message", "ServiceSpec", False),
    },
    "ServiceSpec": {
        1: ("ports", "message", "ServicePort", True),
        2: ("selector", "map_ss", None, False),
        3: ("clusterIP", "string", None, False),
        4: ("type", "string", None, False),
        10: ("externalName", "string", None, False),
    },
    "ServicePort": {
        1: ("name", "string", None, False),
        2: ("protocol", "string", None, False),
        3: ("port", "int", None, False),
        4: ("targetPort", "intorstr", None, False),
        5: ("nodePort", "int", None, False),
    },
    "IntOrString": {
        1: ("type", "int", None, False),
        2: ("intVal", "int", None, False),
        3: ("strVal", "string", None, False),
    },
    "Deployment": {
        1: ("metadata", "message", "ObjectMeta", False),
        2: ("spec", "message", "DeploymentSpec", False),
    },
    "DeploymentSpec": {
        1: ("replicas", "int", None, False),
        2: ("selector", "message", "LabelSelector", False),
        3: ("template", "message", "PodTemplateSpec", False),
        5: ("minReadySeconds", "int", None, False),
        6: ("revisionHistoryLimit", "int", None, False),
        7: ("paused", "bool", None, False),
        9: ("progressDeadlineSeconds", "int", None, False),
    },
    "LabelSelector": {1: ("matchLabels", "map_ss", None, False)},
    "PodTemplateSpec": {
        1: ("metadata", "message", "ObjectMeta", False),
        2: ("spec", "message", "PodSpec", False),
    },
    "PodSpec": {
        2: ("containers", "message", "Container", True),
        3: ("restartPolicy", "string", None, False),
        8: ("serviceAccountName", "string", None, False),
    },
    "Container": {
        1: ("name", "string", None, False),
        2: ("image", "string", None, False),
        3: ("command", "string", None, True),
        4: ("args", "string", None, True),
        6: ("ports", "message", "ContainerPort", True),
        7: ("env", "message", "EnvVar", True),
        14: ("imagePullPolicy", "string", None, False),
    },
    "ContainerPort": {
        1: ("name", "string", None, False),
        3: ("containerPort", "int", None, False),
        4: ("protocol", "string", None, False),
    },
    "EnvVar": {1: ("name", "string", None, False), 2: ("value", "string", None, False)},
    "Time": {1: ("seconds", "int", None, False), 2: ("nanos", "int", None, False)},
    "MapEntry": {1: ("key", "bytes", None, False), 2: ("value", "bytes", None, False)},
}

DECODABLE_KINDS = {"Secret", "Namespace", "Service", "Deployment"}


def _unsupported(what: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({what}) - accepted media types "
        "include: application/json, application/yaml",
    )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Raw (field number, wire type, value) triples of one message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value = data[pos : pos + length]
            if len(value) != length:
                raise ValueError("truncated field")
            pos += length
        elif wire == 1:
            value = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            value = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_message(data: bytes, schema: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    spec = SCHEMAS[schema]
    for number, _, value in fields(data):
        field = spec.get(number)
        if field is None:
            continue  # a field this emulation does not model: ignored, never misread
        name, kind, nested, repeated = field
        decoded: Any
        if kind in ("map_ss", "map_sb"):
            assert isinstance(value, bytes)
            entry = {n: v for n, _, v in fields(value)}
            key = entry.get(1, b"")
            raw = entry.get(2, b"")
            assert isinstance(key, bytes)
            assert isinstance(raw, bytes)
            text = raw.decode() if kind == "map_ss" else base64.b64encode(raw).decode()
            result.setdefault(name, {})[key.decode()] = text
            continue
        if kind == "string":
            assert isinstance(value, bytes)
            decoded = value.decode()
        elif kind == "bytes":
            decoded = value
        elif kind == "int":
            assert isinstance(value, int)
            decoded = _signed(value)
        elif kind == "bool":
            decoded = bool(value)
        elif kind == "time":
            assert isinstance(value, bytes)
            seconds = decode_message(value, "Time").get("seconds", 0)
            decoded = (  # Go's zero Time is JSON null
                datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
                if seconds
                else None
            )
        elif kind == "intorstr":
            assert isinstance(value, bytes)
            ios = decode_message(value, "IntOrString")
            decoded = ios.get("strVal", "") if ios.get("type") == 1 else ios.get("intVal", 0)
        else:
            assert isinstance(value, bytes)
            assert nested is not None
            decoded = decode_message(value, nested)
        if repeated:
            result.setdefault(name, []).append(decoded)
        else:
            result[name] = decoded
    return result


def decode_object(body: bytes) -> dict[str, Any]:
    """A JSON-shaped object from a protobuf request body; 415 for kinds not modelled."""
    if not body.startswith(MAGIC):
        raise _unsupported("missing the k8s protobuf prefix")
    try:
        envelope = decode_message(body[len(MAGIC) :], "Unknown")
        type_meta = envelope.get("typeMeta") or {}
        kind = type_meta.get("kind", "")
        if kind not in DECODABLE_KINDS:
            raise _unsupported(f"protobuf for kind {kind or 'unknown'}")
        raw = envelope.get("raw", b"")
        assert isinstance(raw, bytes)
        obj = decode_message(raw, kind)
    except (ValueError, UnicodeDecodeError, AssertionError):
        raise ApiError(
            400, "BadRequest", "the protobuf request body could not be decoded"
        ) from None
    obj = {k: _omit_empty(v, k) for k, v in obj.items() if v not in ("", 0, False, None)}
    obj["kind"] = kind
    obj["apiVersion"] = type_meta.get("apiVersion", "v1")
    return obj


_KEEP_ZERO = {"replicas", "port", "containerPort", "targetPort"}


def _omit_empty(value: Any, name: str = "") -> Any:
    """Go marshals every optional scalar; JSON clients omit empty ones (``omitempty``)."""
    if isinstance(value, dict):
        pruned = {k: _omit_empty(v, k) for k, v in value.items()}
        return {
            k: v
            for k, v in pruned.items()
            if k in _KEEP_ZERO or v not in ("", 0, False, None) or isinstance(v, dict | list)
        }
    if isinstance(value, list):
        return [_omit_empty(v, name) for v in value]
    return value
