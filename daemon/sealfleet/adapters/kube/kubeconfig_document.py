"""What a kubeconfig file says: parsed, indexed by name, one context's entries checked.

Parsing uses libyaml where PyYAML has it (its wheels do), several times faster than the
pure-Python parser kubernetes-asyncio uses.  Every problem is a :class:`KubeconfigError`:
one line naming the file, the context and the faulty key; never a token or key material
(YAML errors are not chained: their text quotes the document).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import ssl
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML has no stubs (kubernetes-asyncio needs it)

from sealfleet.adapters.kube import tls
from sealfleet.domain.redaction import mask_text
from sealfleet.errors import PermanentError

# libyaml when PyYAML was built with it, else the same safe loader in Python.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_MESSAGE = 200
_NAMES_SHOWN = 5


class KubeconfigError(PermanentError):
    """A kubeconfig file or context that cannot be used as it is."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One parsed file: each section's entries by name (the inner mapping, unchecked)."""

    contexts: dict[str, object]
    clusters: dict[str, object]
    users: dict[str, object]
    duplicated: frozenset[tuple[str, str]]
    current_context: str | None


@dataclasses.dataclass(frozen=True)
class Selection:
    """One context's entries, checked, with its TLS material and (shared) context once built.

    ``where`` is how errors name it: ``kubeconfig PATH context 'NAME'``.
    """

    where: str
    name: str
    context: dict[str, Any]
    cluster_name: str
    cluster: dict[str, Any]
    user_name: str | None
    user: dict[str, Any] | None
    base_dir: str
    material: tls.TlsMaterial | None = None
    ssl_context: ssl.SSLContext | None = None


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def parse_document(data: bytes, path: str) -> Document:
    """The file's sections indexed by name; raises :class:`KubeconfigError`."""
    try:
        raw = yaml.load(data, Loader=_LOADER)  # noqa: S506  # a SafeLoader, C or Python
    except yaml.YAMLError as exc:
        # Not chained: a YAML error's text quotes the document, tokens and keys included.
        raise KubeconfigError(f"kubeconfig {path}: {_yaml_problem(exc)}") from None
    if raw is None:
        raw = {}  # an empty file is an empty config, as for kubectl
    if not isinstance(raw, dict):
        raise KubeconfigError(f"kubeconfig {path}: expected a mapping at the top level, "
                              f"not {_kind(raw)}")
    sections: dict[str, dict[str, object]] = {}
    duplicated: set[tuple[str, str]] = set()
    for section, inner in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
        items = raw.get(section) or []
        if not isinstance(items, list):
            raise KubeconfigError(f"kubeconfig {path}: {section}: expected a list, "
                                  f"not {_kind(items)}")
        named: dict[str, object] = {}
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                raise KubeconfigError(f"kubeconfig {path}: {section}[{index}].name: "
                                      "expected a non-empty string")
            if name in named:
                duplicated.add((section, name))  # an error only for whoever uses it
                continue
            named[name] = item.get(inner)
        sections[section] = named
    current = raw.get("current-context")
    if current is not None and not isinstance(current, str):
        raise KubeconfigError(f"kubeconfig {path}: current-context: expected a string, "
                              f"not {_kind(current)}")
    return Document(sections["contexts"], sections["clusters"], sections["users"],
                     frozenset(duplicated), current or None)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "unreadable"
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{at}: {mask_text(str(problem))[:MAX_MESSAGE]}"


def _names(named: dict[str, object]) -> str:
    if not named:
        return "it has none"
    shown = ", ".join(list(named)[:_NAMES_SHOWN])
    more = f", and {len(named) - _NAMES_SHOWN} more" if len(named) > _NAMES_SHOWN else ""
    return f"it has {len(named)}: {shown}{more}"


def select(document: Document, path: str, context: str | None, *, base_dir: str) -> Selection:
    """The entries of *context* (or the current-context), checked; no TLS yet."""
    if context is None:
        if document.current_context is None:
            raise KubeconfigError(f"kubeconfig {path}: no context given and no "
                                  "current-context set")
        context = document.current_context
    where = f"kubeconfig {path} context {context!r}"
    if ("contexts", context) in document.duplicated:
        raise KubeconfigError(f"{where}: contexts: the name is defined more than once")
    if context not in document.contexts:
        raise KubeconfigError(f"{where}: no such context ({_names(document.contexts)})")
    inner = document.contexts[context] or {}
    key = f"contexts[name={context}].context"
    if not isinstance(inner, dict):
        raise KubeconfigError(f"{where}: {key}: expected a mapping, not {_kind(inner)}")
    cluster_name = inner.get("cluster")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise KubeconfigError(f"{where}: {key}.cluster: expected a cluster name")
    cluster = _referenced(document, "clusters", cluster_name, where, f"{key}.cluster")
    if cluster is None:
        raise KubeconfigError(f"{where}: clusters[name={cluster_name}].cluster: missing")
    if not isinstance(cluster.get("server"), str) or not cluster["server"]:
        raise KubeconfigError(f"{where}: clusters[name={cluster_name}].cluster.server: "
                              "expected a URL")
    user_name = inner.get("user") or None
    user = None
    if user_name is not None:
        if not isinstance(user_name, str):
            raise KubeconfigError(f"{where}: {key}.user: expected a user name")
        user = _referenced(document, "users", user_name, where, f"{key}.user") or {}
    return Selection(where, context, dict(inner), cluster_name, cluster, user_name, user,
                      base_dir)


def _referenced(document: Document, section: str, name: str, where: str,
                key: str) -> dict[str, Any] | None:
    named: dict[str, object] = getattr(document, section)
    if (section, name) in document.duplicated:
        raise KubeconfigError(f"{where}: {section}: {name!r} is defined more than once")
    if name not in named:
        raise KubeconfigError(f"{where}: {key}: {name!r} is not in {section}")
    value = named[name]
    if value is not None and not isinstance(value, dict):
        raise KubeconfigError(f"{where}: {section}[name={name}]: expected a mapping, "
                              f"not {_kind(value)}")
    return value


def _file_or_data(entry: dict[str, Any], key: str, selection: Selection,
                  prefix: str) -> bytes | None:
    """``KEY-data`` (base64) if set, else the file ``KEY`` (relative to the kubeconfig)."""
    data = entry.get(f"{key}-data")
    if data:
        if not isinstance(data, str):
            raise KubeconfigError(f"{selection.where}: {prefix}.{key}-data: expected base64 text")
        try:
            # Strict, as kubectl (Go's StdEncoding) is, line breaks aside: the lenient
            # default drops stray characters and hands OpenSSL garbage.
            return base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{selection.where}: {prefix}.{key}-data: "
                                  "not valid base64") from None
    name = entry.get(key)
    if not name:
        return None
    if not isinstance(name, str):
        raise KubeconfigError(f"{selection.where}: {prefix}.{key}: expected a file name")
    full = os.path.join(selection.base_dir, os.path.expanduser(name))
    try:
        with open(full, "rb") as f:
            return f.read()
    except OSError as exc:
        raise KubeconfigError(f"{selection.where}: {prefix}.{key}: cannot read {full}: "
                              f"{exc.strerror or type(exc).__name__}") from exc


def static_material(selection: Selection) -> tls.TlsMaterial | None:
    """The TLS material the kubeconfig itself holds, None for a plain-http server."""
    if not selection.cluster["server"].startswith("https"):
        return None  # as kubernetes-asyncio: no CA or client certificate for http
    cluster_key = f"clusters[name={selection.cluster_name}].cluster"
    skip = selection.cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(skip, bool):  # the string "false" must not turn verification off
        raise KubeconfigError(f"{selection.where}: {cluster_key}.insecure-skip-tls-verify: "
                              "expected true or false")
    ca = _file_or_data(selection.cluster, "certificate-authority", selection, cluster_key)
    cert = key = None
    if selection.user:
        user_key = f"users[name={selection.user_name}].user"
        cert = _file_or_data(selection.user, "client-certificate", selection, user_key)
        key = _file_or_data(selection.user, "client-key", selection, user_key)
    return tls.TlsMaterial(ca=ca, client_cert=cert, client_key=key, verify=not skip)
