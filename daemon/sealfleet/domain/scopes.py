"""Sealing scopes and the OAEP label each one binds into the ciphertext.

The label is what makes a strict SealedSecret undecryptable under another name or
namespace: the controller computes it from the *top-level* SealedSecret metadata
(name, namespace, scope annotation), never from ``spec.template``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

ANNOTATION_PREFIX = "sealedsecrets.bitnami.com/"
ANNOTATION_CLUSTER_WIDE = ANNOTATION_PREFIX + "cluster-wide"
ANNOTATION_NAMESPACE_WIDE = ANNOTATION_PREFIX + "namespace-wide"


class Scope(enum.IntEnum):
    """The controller's scope enum; the integer values match the Go constants."""

    STRICT = 0
    NAMESPACE_WIDE = 1
    CLUSTER_WIDE = 2

    @property
    def cli_name(self) -> str:
        return ("strict", "namespace-wide", "cluster-wide")[self.value]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse a scope name as kubeseal does; the empty string means strict."""
        names = {"": cls.STRICT, "strict": cls.STRICT, "namespace-wide": cls.NAMESPACE_WIDE,
                 "cluster-wide": cls.CLUSTER_WIDE}
        try:
            return names[text]
        except KeyError:
            raise ValueError(
                f"unknown scope {text!r}: expected strict, namespace-wide or cluster-wide"
            ) from None


def encryption_label(scope: Scope, namespace: str, name: str) -> bytes:
    """The OAEP label for a value sealed under *scope* (``ns/name``, ``ns`` or empty)."""
    if scope is Scope.STRICT:
        return f"{namespace}/{name}".encode()
    if scope is Scope.NAMESPACE_WIDE:
        return namespace.encode()
    return b""


def scope_from_annotations(annotations: Mapping[str, str] | None) -> Scope:
    """Read the scope the way the controller does: only the exact value "true" counts,
    and cluster-wide wins when both annotations are set."""
    if not annotations:
        return Scope.STRICT
    if annotations.get(ANNOTATION_CLUSTER_WIDE) == "true":
        return Scope.CLUSTER_WIDE
    if annotations.get(ANNOTATION_NAMESPACE_WIDE) == "true":
        return Scope.NAMESPACE_WIDE
    return Scope.STRICT


def with_scope_annotations(annotations: Mapping[str, str] | None, scope: Scope) -> dict[str, str]:
    """Return *annotations* with both scope keys removed and the one for *scope* set."""
    result = {k: v for k, v in (annotations or {}).items()
              if k not in (ANNOTATION_CLUSTER_WIDE, ANNOTATION_NAMESPACE_WIDE)}
    if scope is Scope.CLUSTER_WIDE:
        result[ANNOTATION_CLUSTER_WIDE] = "true"
    elif scope is Scope.NAMESPACE_WIDE:
        result[ANNOTATION_NAMESPACE_WIDE] = "true"
    return result
