"""What a reseal job is asked (a selection) and what it journals (planned entries), as
JSON: parsed with one-line errors naming the field, and written back the same way.

Asked: ``states`` (default stale and compromised), ``clusters``, ``repos``,
``namespaces`` and ``names`` (shell patterns), ``scopes``, ``sources`` (``cluster``,
``git``) or ``include_git: false``, ``include_hinted`` (objects only hinted to be
GitOps-managed, by ``app.kubernetes.io/instance``, resealed in the cluster),
``dry_run``.  A repository entry journaled for a ``repo:`` step holds names, paths and
fingerprints only, never a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sealfleet.adapters.store.records import JsonValue
from sealfleet.domain.planning.resealing import (
    DEFAULT_STATES,
    ItemKey,
    PlannedReseal,
    Selection,
    Source,
)
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError

FIELDS = frozenset({"states", "clusters", "repos", "namespaces", "names", "scopes",
                    "sources", "include_git", "include_hinted", "dry_run",
                    "after_job"})
MAX_ENTRIES = 1000


def _strings(params: Mapping[str, JsonValue], key: str) -> tuple[str, ...] | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ENTRIES or not all(
            isinstance(v, str) and v for v in value):
        raise InputError(f"{key} must be an array of at most {MAX_ENTRIES} non-empty strings")
    return tuple(str(v) for v in value)


def _choices(params: Mapping[str, JsonValue], key: str,
             allowed: list[str]) -> tuple[str, ...] | None:
    values = _strings(params, key)
    if values is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise InputError(f"{key}: {bad[0]!r} is not one of {', '.join(allowed)}")
    return values


def selection_of(params: Mapping[str, JsonValue]) -> Selection:
    """The planner's selection from a request; InputError names the field that is wrong."""
    unknown = sorted(set(params) - FIELDS)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}: expected {', '.join(sorted(FIELDS))}")
    for flag in ("include_git", "include_hinted", "dry_run"):
        if flag in params and not isinstance(params[flag], bool):
            raise InputError(f"{flag} must be true or false")
    states = _choices(params, "states", [s.value for s in SecretState])
    scopes = _choices(params, "scopes", [s.cli_name for s in Scope])
    sources = _choices(params, "sources", [s.value for s in Source])
    chosen = frozenset(Source(s) for s in sources) if sources is not None else None
    if params.get("include_git") is False:
        chosen = (chosen or frozenset(Source)) - {Source.GIT}
    if chosen is not None and not chosen:
        raise InputError("nothing selected: sources exclude both cluster and git")
    clusters = _strings(params, "clusters")
    repos = _strings(params, "repos")
    return Selection(
        states=frozenset(SecretState(s) for s in states) if states else DEFAULT_STATES,
        clusters=frozenset(clusters) if clusters is not None else None,
        repos=frozenset(repos) if repos is not None else None,
        namespaces=_strings(params, "namespaces"), names=_strings(params, "names"),
        scopes=frozenset(Scope.parse(s) for s in scopes) if scopes is not None else None,
        sources=chosen)


def _listed(values: Iterable[object] | None) -> JsonValue:
    if values is None:
        return None
    found: list[JsonValue] = [*sorted(str(getattr(v, "value", v)) for v in values)]
    return found


def selection_document(selection: Selection) -> dict[str, JsonValue]:
    listed = _listed
    scopes: JsonValue = None
    if selection.scopes is not None:
        scopes = _listed(s.cli_name for s in selection.scopes)
    return {"states": listed(selection.states), "clusters": listed(selection.clusters),
            "repos": listed(selection.repos), "namespaces": listed(selection.namespaces),
            "names": listed(selection.names),
            "scopes": scopes,
            "sources": listed(selection.sources)}


def entry_document(entry: PlannedReseal) -> dict[str, JsonValue]:
    """A planned reseal as journaled (names, paths, fingerprints)."""
    items: list[JsonValue] = [[i.item, i.fingerprint] for i in entry.items]
    clusters: list[JsonValue] = list(entry.clusters)
    return {"source": entry.source.value, "reason": entry.reason.value,
            "namespace": entry.namespace, "name": entry.name, "scope": entry.scope.cli_name,
            "target_key": entry.target_key, "items": items, "cluster": entry.cluster,
            "repo": entry.repo, "path": entry.path, "document": entry.document,
            "clusters": clusters}


def entry_from_document(document: Mapping[str, JsonValue]) -> PlannedReseal:
    """:func:`entry_document` read back (the journal is ours: a bad one is an InputError)."""
    try:
        items = tuple(ItemKey(str(i[0]), None if i[1] is None else str(i[1]))  # type: ignore[index]
                      for i in document["items"] or [])  # type: ignore[union-attr]
        index = document.get("document")
        return PlannedReseal(
            source=Source(str(document["source"])), reason=SecretState(str(document["reason"])),
            namespace=str(document["namespace"]), name=str(document["name"]),
            scope=Scope.parse(str(document["scope"])), target_key=str(document["target_key"]),
            items=items,
            cluster=None if document.get("cluster") is None else str(document["cluster"]),
            repo=None if document.get("repo") is None else str(document["repo"]),
            path=None if document.get("path") is None else str(document["path"]),
            document=index if isinstance(index, int) else None,
            clusters=tuple(str(c) for c in document.get("clusters") or []))  # type: ignore[union-attr]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"a journaled reseal entry is malformed ({type(exc).__name__})") \
            from None
