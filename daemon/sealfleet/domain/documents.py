"""Reading and writing Kubernetes manifests: multi-document YAML or JSON streams.

Pure text in, plain ``dict`` out.  JSON output follows kubeseal (two-space indent, a
trailing newline); YAML output is preceded by ``---`` with keys sorted, as kubeseal's
YAML printer does.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from sealfleet.errors import InputError

OutputFormat = Literal["json", "yaml"]


def _yaml_loader() -> YAML:
    return YAML(typ="safe")


def _yaml_dumper() -> YAML:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.width = 1 << 30  # never fold long base64 values
    return yaml


def parse_documents(text: str | bytes, *, source: str = "<stdin>") -> list[dict[str, Any]]:
    """Parse a YAML or JSON stream into its non-empty documents.

    Errors name *source* and the document index; they never quote the content,
    which may be a plaintext Secret.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source}: not UTF-8 text") from None
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(("{", "[")):
        docs = list(_iter_json_values(stripped, source))
    else:
        try:
            docs = list(_yaml_loader().load_all(text))
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"{source}: invalid YAML{where}") from None
    result: list[dict[str, Any]] = []
    for index, doc in enumerate(d for d in docs if d is not None):
        if not isinstance(doc, dict):
            raise InputError(f"{source}: document {index}: expected a mapping (an object)")
        result.append(_plain(doc))
    return result


def _plain(value: Any) -> Any:
    """Turn YAML timestamps back into the RFC 3339 strings Kubernetes uses.

    An unquoted ``creationTimestamp: 2021-01-25T11:11:20Z`` loads as a datetime, which
    JSON cannot carry; Go's YAML-to-JSON step keeps it a string, and so do we.
    """
    if isinstance(value, dict):
        return {str(k) if isinstance(k, dt.date) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() == dt.timedelta(0):
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _iter_json_values(text: str, source: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    pos = 0
    index = 0
    while pos < len(text):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{source}: document {index}: invalid JSON at line {exc.lineno}") from None
        yield value
        index += 1
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1


def dump_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def dump_yaml(doc: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    buffer.write("---\n")
    _yaml_dumper().dump(_sorted(doc), buffer)
    return buffer.getvalue()


def dump(doc: Mapping[str, Any], fmt: OutputFormat) -> str:
    return dump_yaml(doc) if fmt == "yaml" else dump_json(doc)


def dump_all(docs: list[dict[str, Any]], fmt: OutputFormat) -> str:
    return "".join(dump(doc, fmt) for doc in docs)
