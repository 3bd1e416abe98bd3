"""Rewriting only the ciphertext of SealedSecrets in a YAML or JSON file, byte for byte.

A reseal in a GitOps repository must produce a diff of ciphertext lines and nothing
else: comments, key order, indentation, quoting, document separators, anchors, a BOM
and CRLF line endings all stay as the author wrote them.  So nothing is re-serialised:
:func:`locate` finds the exact span of every ``spec.encryptedData`` value in the text
(YAML: the composed nodes' start and end marks; JSON: a scanner over the text), and
:func:`splice` replaces exactly those spans, keeping each value's quoting style, then
parses the result again and checks that every document is unchanged except the
replaced values and that each of those is the intended one.

A value the splice cannot rewrite safely is reported, not rewritten: a block scalar
(``|``, ``>``), a scalar over several lines, one with an anchor, an alias or a tag, a
value shared through an alias, a merge key (``<<``) in ``encryptedData``, a duplicate
key on the way, or a legacy ``spec.data`` object.

YAML is read with libyaml through PyYAML (the C composer is some 30 times faster than
a pure-Python one and its marks are code-point offsets, verified on every span before
it is replaced); JSON with the ``json`` module.  Documents are numbered from 0 as
:func:`sealfleet.domain.documents.parse_documents` numbers them (empty documents are
not counted).  Pure; messages name the file, the document and the item, never a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]  # PyYAML has no stubs

from sealfleet.domain.sealed_secrets import API_VERSION, KIND
from sealfleet.errors import InputError

Style = Literal["plain", "single", "double", "json"]
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_BOM = "\ufeff"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_JSON = json.JSONDecoder()
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class LocatedValue:
    """One ``encryptedData`` value and where it is: ``text[start:end]`` is its source."""

    item: str
    value: str
    start: int
    end: int
    style: Style


@dataclass(frozen=True)
class LocatedDocument:
    """A SealedSecret document of a file: its identity and its spliceable values.

    *problems* maps an item (or ``""`` for the whole document) to why it cannot be
    rewritten.
    """

    index: int
    namespace: str
    name: str
    annotations: Mapping[str, str]
    values: Mapping[str, LocatedValue]
    problems: Mapping[str, str]

    def sealed_secret(self) -> dict[str, Any]:
        """The document reduced to what resealing reads: identity and spliceable items."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
                "spec": {"encryptedData": {i: v.value for i, v in self.values.items()}}}


@dataclass(frozen=True)
class LocatedFile:
    """A file's text and every SealedSecret in it (other documents are left out)."""

    source: str
    text: str
    is_json: bool
    documents: tuple[LocatedDocument, ...]
    trees: tuple[object, ...] = field(repr=False, compare=False)  # per document, for checks

    def document(self, index: int) -> LocatedDocument | None:
        return next((d for d in self.documents if d.index == index), None)


@dataclass(frozen=True)
class Edit:
    """New values for the items of one document, which must be *namespace*/*name*."""

    index: int
    namespace: str
    name: str
    values: Mapping[str, str]


@dataclass(frozen=True)
class Problem:
    """Something not rewritten, and why (never a value)."""

    source: str
    index: int | None
    item: str | None
    reason: str

    def __str__(self) -> str:
        where = self.source
        if self.index is not None:
            where += f": document {self.index}"
        if self.item:
            where += f": spec.encryptedData.{self.item}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class SpliceResult:
    """The new content (the original bytes when nothing changed) and what was done."""

    source: str
    content: bytes
    changed: bool
    replaced: tuple[tuple[int, str], ...]
    problems: tuple[Problem, ...]


# ------------------------------------------------------------------------ locating


def locate(content: bytes, *, source: str) -> LocatedFile:
    """Find every SealedSecret's ``encryptedData`` value spans in *content*.

    Raises :class:`InputError` (naming *source*) for text that is not UTF-8 or does not
    parse; nothing of the content is quoted.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None
    offset = 1 if text.startswith(_BOM) else 0
    if text[offset:].lstrip().startswith(("{", "[")):
        return _locate_json(source, text, offset)
    return _locate_yaml(source, text, offset)


def _compose(source: str, text: str, offset: int) -> list[Any]:
    try:
        # libyaml skips a BOM without counting it: marks are offsets after it.
        return list(yaml.compose_all(text[offset:], Loader=_LOADER))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source}: invalid YAML{where}") from None


def _compose_documents(source: str, text: str, offset: int) -> list[Any]:
    """The stream's documents, empty (null) ones left out as ``parse_documents`` does."""
    return [root for root in _compose(source, text, offset)
            if not (isinstance(root, yaml.ScalarNode) and root.tag == _NULL)]


def _locate_yaml(source: str, text: str, offset: int) -> LocatedFile:
    trees = _compose_documents(source, text, offset)
    documents = [doc for index, root in enumerate(trees)
                 if (doc := _yaml_document(text, offset, index, root)) is not None]
    return LocatedFile(source, text, False, tuple(documents), tuple(trees))


def _scalar(node: Any) -> str | None:
    """A string scalar's value (a YAML 1.1 bool or number is not a string here)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return str(node.value)
    return None


def _pairs(node: Any) -> list[tuple[str | None, Any]]:
    return [(_scalar(k), v) for k, v in node.value] if isinstance(node, yaml.MappingNode) else []


def _get(node: Any, key: str) -> tuple[Any, int]:
    """The value under *key* in a mapping node (the last, as loaders take it) and how
    often the key occurs."""
    found = [v for k, v in _pairs(node) if k == key]
    return (found[-1] if found else None), len(found)


def _references(root: Any) -> dict[int, int]:
    """How often each node of a document is reached (more than once: through an alias)."""
    counts: dict[int, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        seen = counts.get(id(node), 0)
        counts[id(node)] = seen + 1
        if seen:
            continue
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return counts


def _yaml_document(text: str, offset: int, index: int, root: Any) -> LocatedDocument | None:
    if _scalar(_get(root, "kind")[0]) != KIND or not str(
            _scalar(_get(root, "apiVersion")[0]) or "").startswith("bitnami.com/"):
        return None
    metadata, _ = _get(root, "metadata")
    annotations = {k: s for k, v in _pairs(_get(metadata, "annotations")[0])
                   if k is not None and (s := _scalar(v)) is not None}
    namespace = _scalar(_get(metadata, "namespace")[0]) or ""
    name = _scalar(_get(metadata, "name")[0]) or ""
    problems: dict[str, str] = {}
    values: dict[str, LocatedValue] = {}
    # Only an alias (``*name``) makes a node reachable twice: without a "*" anywhere in
    # the text (the common case: base64 has none) there is no graph to walk.
    refs = _references(root) if "*" in text else {}
    spec, spec_count = _get(root, "spec")
    encrypted, encrypted_count = _get(spec, "encryptedData")
    if _get(spec, "data")[0] is not None:
        problems[""] = "uses the legacy spec.data (reseal it with 'sealfleet reencrypt')"
    elif spec_count > 1 or encrypted_count > 1:
        problems[""] = "has a duplicate spec or spec.encryptedData key"
    elif encrypted is not None and not isinstance(encrypted, yaml.MappingNode):
        problems[""] = "spec.encryptedData is not a mapping"
    elif refs.get(id(spec), 0) > 1 or refs.get(id(encrypted), 0) > 1:
        problems[""] = "spec.encryptedData is shared through a YAML alias"
    elif any(k.tag == _MERGE for k, _ in (encrypted.value if encrypted is not None else ())):
        problems[""] = "spec.encryptedData uses a merge key (<<)"
    else:
        seen: dict[str, int] = {}
        for key, node in _pairs(encrypted):
            if key is None:
                problems[""] = "spec.encryptedData has a key that is not a string"
                continue
            seen[key] = seen.get(key, 0) + 1
            reason = _unspliceable(text, offset, node, refs)
            if reason is not None:
                problems[key] = reason
            else:
                start, end = node.start_mark.index + offset, node.end_mark.index + offset
                values[key] = LocatedValue(key, str(node.value), start, end,
                                           _YAML_STYLES[node.style or ""])
        for key, count in seen.items():
            if count > 1:
                values.pop(key, None)
                problems[key] = "occurs more than once"
    return LocatedDocument(index, namespace, name, annotations, values, problems)


_YAML_STYLES: dict[str, Style] = {"": "plain", "'": "single", '"': "double"}


def _unspliceable(text: str, offset: int, node: Any, refs: Mapping[int, int]) -> str | None:
    """Why this value node cannot be replaced in place, or None when it can."""
    if not isinstance(node, yaml.ScalarNode):
        return "is not a string"
    span = text[node.start_mark.index + offset:node.end_mark.index + offset]
    if refs.get(id(node), 0) > 1 or span.startswith("*"):
        return "is shared through a YAML alias"
    if span.startswith("&"):
        return "has a YAML anchor"
    if span.startswith("!"):
        return "has an explicit YAML tag"
    if node.tag != _STR:
        return "is not a string"
    if node.style in ("|", ">"):
        return "is a block scalar (| or >)"
    if "\n" in span or "\r" in span:
        return "spans several lines"
    value = str(node.value)
    expected = {None: value, "": value, "'": "'" + value.replace("'", "''") + "'"}.get(node.style)
    if expected is not None and span != expected:
        return "does not match its source text"
    if node.style == '"' and not (len(span) >= 2 and span[0] == span[-1] == '"'):
        return "does not match its source text"
    return None


def _skip_space(text: str, pos: int) -> int:
    match = _JSON_SPACE.match(text, pos)
    return match.end() if match else pos


def _json_values(source: str, text: str, offset: int) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) of every JSON value of a concatenated stream but ``null``
    (left out as ``parse_documents`` leaves it out)."""
    pos = _skip_space(text, offset)
    index = 0
    while pos < len(text):
        try:
            value, end = _JSON.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: document {index}: invalid JSON "
                             f"at line {exc.lineno}") from None
        if value is not None:
            yield pos, end, value
            index += 1
        pos = _skip_space(text, end)


def _locate_json(source: str, text: str, offset: int) -> LocatedFile:
    documents: list[LocatedDocument] = []
    trees: list[object] = []
    for index, (start, _, value) in enumerate(_json_values(source, text, offset)):
        trees.append(value)
        if not (isinstance(value, dict) and value.get("kind") == KIND
                and str(value.get("apiVersion") or "").startswith("bitnami.com/")):
            continue
        raw_metadata = value.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        raw_annotations = metadata.get("annotations")
        annotations = ({k: v for k, v in raw_annotations.items() if isinstance(v, str)}
                       if isinstance(raw_annotations, dict) else {})
        problems: dict[str, str] = {}
        values: dict[str, LocatedValue] = {}
        spec = value.get("spec")
        if isinstance(spec, dict) and spec.get("data") is not None:
            problems[""] = "uses the legacy spec.data (reseal it with 'sealfleet reencrypt')"
        else:
            _json_spans(text, start, values, problems)
        documents.append(LocatedDocument(
            index, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""),
            annotations, values, problems))
    return LocatedFile(source, text, True, tuple(documents), tuple(trees))


def _json_spans(text: str, pos: int, values: dict[str, LocatedValue],
                problems: dict[str, str]) -> None:
    """Walk one (valid) JSON object at *pos* down spec -> encryptedData, noting spans."""
    seen: dict[tuple[str, ...], int] = {}

    def walk(pos: int, path: tuple[str, ...]) -> int:
        pos = _skip_space(text, pos + 1)  # past "{"
        while text[pos] != "}":
            key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            pos = _skip_space(text, _skip_space(text, pos) + 1)  # past ":"
            here = (*path, key)
            seen[here] = seen.get(here, 0) + 1
            if len(here) < 3 and here == ("spec", "encryptedData")[:len(here)] \
                    and text[pos] == "{":
                pos = walk(pos, here)
            elif len(here) == 3 and text[pos] == '"':
                item_value, end = json.decoder.scanstring(  # type: ignore[attr-defined]
                    text, pos + 1)
                values[key] = LocatedValue(key, item_value, pos, end, "json")
                pos = end
            else:
                if len(here) == 3:
                    problems[key] = "is not a string"
                _, pos = _JSON.raw_decode(text, pos)
            pos = _skip_space(text, pos)
            if text[pos] == ",":
                pos = _skip_space(text, pos + 1)
        return pos + 1

    walk(pos, ())
    if seen.get(("spec",), 0) > 1 or seen.get(("spec", "encryptedData"), 0) > 1:
        problems[""] = "has a duplicate spec or spec.encryptedData key"
        values.clear()
        return
    for here, count in seen.items():
        if count > 1 and len(here) == 3:
            values.pop(here[2], None)
            problems[here[2]] = "occurs more than once"


# ------------------------------------------------------------------------ splicing


def _quoted(value: str, style: Style) -> str:
    if style == "single":
        return "'" + value + "'"
    if style in ("double", "json"):
        return '"' + value + '"'
    return value


def _safe_new_value(value: str) -> bool:
    # Base64 (what a sealed value is) never needs escaping in any of the four styles.
    return bool(value) and re.fullmatch(r"[A-Za-z0-9+/=]+", value) is not None


def splice(located: LocatedFile, edits: Sequence[Edit]) -> SpliceResult:
    """Replace the values *edits* name; everything else stays byte for byte.

    Values equal to the current ones are not replaced; with nothing to replace the
    original bytes come back and *changed* is False.  A problem with one value does not
    stop the others; a result that does not parse back as intended changes nothing.
    """
    source = located.source
    problems: list[Problem] = []
    spans: list[tuple[LocatedValue, str, int]] = []
    for edit in edits:
        document = located.document(edit.index)
        if document is None:
            problems.append(Problem(source, edit.index, None, "is not a SealedSecret"))
            continue
        if (document.namespace, document.name) != (edit.namespace, edit.name):
            problems.append(Problem(source, edit.index, None,
                                    f"is {document.namespace}/{document.name}, "
                                    f"expected {edit.namespace}/{edit.name}"))
            continue
        for item, new_value in edit.values.items():
            reason = document.problems.get("") or document.problems.get(item)
            spot = document.values.get(item)
            if reason is None and spot is None:
                reason = "not found"
            if reason is None and not _safe_new_value(new_value):
                reason = "the new value is not base64"
            if reason is not None or spot is None:
                problems.append(Problem(source, edit.index, item, reason or "not found"))
            elif spot.value != new_value:
                spans.append((spot, new_value, edit.index))
    original = located.text.encode("utf-8")
    if not spans:
        return SpliceResult(source, original, False, (), tuple(problems))
    spans.sort(key=lambda s: s[0].start)
    parts: list[str] = []
    cursor = 0
    text = located.text
    for spot, new_value, _ in spans:
        parts.append(text[cursor:spot.start])
        parts.append(_quoted(new_value, spot.style))
        cursor = spot.end
    parts.append(text[cursor:])
    new_text = "".join(parts)
    expected = {(index, spot.item): new_value for spot, new_value, index in spans}
    failure = _check(located, new_text, expected)
    if failure is not None:
        problems.append(Problem(source, None, None, failure))
        return SpliceResult(source, original, False, (), tuple(problems))
    replaced = tuple(sorted(expected))
    return SpliceResult(source, new_text.encode("utf-8"), True, replaced, tuple(problems))


def _check(located: LocatedFile, new_text: str,
           expected: Mapping[tuple[int, str], str]) -> str | None:
    """None when *new_text* parses to the same documents with only *expected* changed
    (to the expected values, in the same style)."""
    offset = 1 if new_text.startswith(_BOM) else 0
    try:
        trees = ([value for _, _, value in _json_values(located.source, new_text, offset)]
                 if located.is_json else _compose_documents(located.source, new_text, offset))
    except InputError:
        return "the spliced text no longer parses; left unchanged"
    if len(trees) != len(located.trees):
        return "the spliced text has another number of documents; left unchanged"
    for index, (old, new) in enumerate(zip(located.trees, trees, strict=True)):
        wanted = {item: value for (at, item), value in expected.items() if at == index}
        same = (_same_json(old, new, wanted) if located.is_json
                else _same_nodes(old, new, wanted))
        if not same:
            return f"document {index} changed beyond its values; left unchanged"
    return None


def _same_json(old: Any, new: Any, wanted: Mapping[str, str]) -> bool:
    if not wanted:
        return bool(old == new)
    patched = {**old, "spec": {**old["spec"], "encryptedData": {
        **old["spec"]["encryptedData"], **wanted}}}
    return bool(patched == new)


def _same_nodes(old_root: Any, new_root: Any, wanted: Mapping[str, str]) -> bool:
    """Node trees equal (tags, values, styles, aliasing), except that the *wanted* items'
    value nodes hold their new values."""
    changed: dict[int, str] = {}
    if wanted:
        encrypted, _ = _get(_get(old_root, "spec")[0], "encryptedData")
        changed = {id(v): wanted[k] for k, v in _pairs(encrypted) if k is not None and k in wanted}
        if len(changed) != len(wanted):
            return False
    pairs: dict[int, int] = {}
    stack = [(old_root, new_root)]
    while stack:
        old, new = stack.pop()
        if id(old) in pairs:
            if pairs[id(old)] != id(new):
                return False
            continue
        pairs[id(old)] = id(new)
        if type(old) is not type(new) or old.tag != new.tag:
            return False
        if isinstance(old, yaml.ScalarNode):
            if old.style != new.style or new.value != changed.get(id(old), old.value):
                return False
        else:
            if len(old.value) != len(new.value):
                return False
            if isinstance(old, yaml.MappingNode):
                for (ok, ov), (nk, nv) in zip(old.value, new.value, strict=True):
                    stack.extend(((ok, nk), (ov, nv)))
            else:
                stack.extend(zip(old.value, new.value, strict=True))
    return True
