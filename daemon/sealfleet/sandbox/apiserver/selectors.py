"""Label and field selectors, parsed and matched as the real apiserver does.

Label selectors: comma-separated requirements, all of which must hold (``=``, ``==``,
``!=``, ``in (...)``, ``notin (...)``, ``key``, ``!key``, and the numeric ``>``/``<``).
A ``!=`` or ``notin`` requirement also matches objects without the key, as in Kubernetes.
Field selectors: ``metadata.name``, ``metadata.namespace`` and, for Secrets, ``type``,
with ``=``, ``==`` and ``!=``; any other field is a 400 "field label not supported".
"""

from __future__ import annotations

import dataclasses
import re

from sealfleet.sandbox.objects import ApiError, Entry, bad_request

_KEY = re.compile(
    r"^([a-z0-9A-Z]([-a-z0-9A-Z.]*[a-z0-9A-Z])?/)?[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$"
)
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == ">" else number < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_error(text: str, why: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {why} in {text!r}")


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise _parse_error(text, f"invalid label key {key!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise _parse_error(text, f"invalid label value {value!r}")
    return value


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(\S*)\s*$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text or not text.strip():
        return []
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            raise _parse_error(text, "empty requirement")
        if match := _SET_RE.match(part):
            key, op, inner = match.groups()
            values = tuple(_check_value(v.strip(), text) for v in inner.split(","))
            requirements.append(Requirement(_check_key(key, text), op, values))
        elif match := _OP_RE.match(part):
            key, op, value = match.groups()
            if op in (">", "<"):
                try:
                    int(value)
                except ValueError:
                    raise _parse_error(text, f"for {op!r}, value must be an integer") from None
            op = "=" if op == "==" else op
            requirements.append(
                Requirement(_check_key(key, text), op, (_check_value(value, text),))
            )
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip(), text), "!"))
        else:
            requirements.append(Requirement(_check_key(part, text), "exists"))
    return requirements


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    field: str
    negated: bool
    value: str


def parse_field_selector(text: str | None, *, allowed: tuple[str, ...]) -> list[FieldRequirement]:
    if not text or not text.strip():
        return []
    result: list[FieldRequirement] = []
    for part in text.split(","):
        part = part.strip()
        if "!=" in part:
            field, value = part.split("!=", 1)
            negated = True
        elif "==" in part:
            field, value = part.split("==", 1)
            negated = False
        elif "=" in part:
            field, value = part.split("=", 1)
            negated = False
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in allowed:
            raise bad_request(f"field label not supported: {field}")
        result.append(FieldRequirement(field, negated, value.strip()))
    return result


# Selectable fields beyond metadata.name/namespace, per resource, as the real registries
# declare them (kubectl describe lists Events by involvedObject.*).
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "secrets": ("type",),
    "namespaces": ("status.phase",),
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}


def field_value(entry: Entry, field: str) -> str:
    if field == "metadata.name":
        return entry.name
    if field == "metadata.namespace":
        return entry.namespace
    if field == "type" and entry.secret_type is not None:
        return entry.secret_type
    node: object = entry.obj()  # rare fields: read them from the stored object
    for part in field.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if field == "source" and node is None:
        return ""
    if isinstance(node, dict):  # events' "source" selects on source.component
        node = node.get("component")
    return "" if node is None else str(node)


class Selector:
    """Label and field requirements together; ``matches`` looks only at an Entry's index."""

    def __init__(self, labels: list[Requirement], fields: list[FieldRequirement]) -> None:
        self.labels = labels
        self.fields = fields

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, entry: Entry) -> bool:
        for freq in self.fields:
            if (field_value(entry, freq.field) == freq.value) == freq.negated:
                return False
        return all(req.matches(entry.labels) for req in self.labels)

    @classmethod
    def parse(
        cls, label_selector: str | None, field_selector: str | None, *, resource: str
    ) -> Selector:
        allowed = ("metadata.name", "metadata.namespace", *EXTRA_FIELDS.get(resource, ()))
        return cls(
            parse_label_selector(label_selector),
            parse_field_selector(field_selector, allowed=allowed),
        )
