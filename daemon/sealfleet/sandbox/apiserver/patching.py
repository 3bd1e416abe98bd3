"""The three patch formats of PATCH requests: JSON merge, JSON patch, strategic merge.

Strategic merge covers the fields sealfleet, kubectl apply and ``kubectl rollout
restart`` touch: maps merge recursively (``null`` deletes a key), lists are replaced
except the keyed ones Kubernetes declares with a merge key (containers and env by
``name``, ownerReferences by ``uid``, conditions by ``type``, ...), and the directives
kubectl generates are honoured: ``$patch: replace|delete``, ``$retainKeys``,
``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>``.
Custom resources do not support strategic merge (415), as on a real cluster.
"""

from __future__ import annotations

import copy
from typing import Any

from sealfleet.sandbox.objects import ApiError

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# patchMergeKey of the keyed lists in the built-in types sealfleet's objects use.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
# Lists of scalars with patchStrategy "merge".
_PRIMITIVE_MERGE = {"finalizers"}


def _invalid_patch(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


# ----------------------------------------------------------------------- merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ------------------------------------------------------------------------ json patch


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _invalid_patch(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise _invalid_patch(f"doc is missing path: {path}")
    return node, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _invalid_patch(f"doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _invalid_patch(f"add operation does not apply: index out of range: {path}")
    else:
        raise _invalid_patch(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise _invalid_patch("cannot remove the whole document")
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise _invalid_patch(f"remove operation does not apply: doc is missing path: {path}")
    return doc


def _replace(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    _get(doc, path)  # replace requires the target to exist
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        parent[last] = value
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _invalid_patch(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            doc = _replace(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            value = _get(doc, op["from"])
            doc = _add(_remove(doc, op["from"]), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _invalid_patch(f"testing value {path} failed: test failed")
        else:
            raise _invalid_patch(f"Unexpected kind: {kind}")
    return doc


# ------------------------------------------------------------------ strategic merge


def strategic_merge(original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(original)
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(
                result.get(key) if isinstance(result.get(key), dict) else {}, value
            )
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _apply_order(field, result[field], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    original_list = original if isinstance(original, list) else []
    if field in _PRIMITIVE_MERGE:
        merged = list(original_list)
        for value in patch:
            if value not in merged:
                merged.append(value)
        return merged
    key = _merge_key(field, patch + original_list)
    if key is None or not all(isinstance(i, dict) for i in patch):
        if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
            return [
                {k: v for k, v in i.items() if k != "$patch"}
                for i in patch
                if not (isinstance(i, dict) and set(i) == {"$patch"})
            ]
        return copy.deepcopy(patch)
    if any(i.get("$patch") == "replace" for i in patch):
        return [
            {k: v for k, v in i.items() if k != "$patch"} for i in patch if set(i) != {"$patch"}
        ]
    merged = copy.deepcopy(original_list)
    for item in patch:
        position = next(
            (
                n
                for n, o in enumerate(merged)
                if isinstance(o, dict) and o.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del merged[position]
        elif position is None:
            merged.append(strategic_merge({}, item))
        else:
            merged[position] = strategic_merge(merged[position], item)
    return merged


def _apply_order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, items)
    if key is None:
        return items
    rank = {(o.get(key) if isinstance(o, dict) else o): n for n, o in enumerate(order)}
    return sorted(
        items,
        key=lambda i: rank.get(i.get(key) if isinstance(i, dict) else i, len(rank)),
    )


# ---------------------------------------------------------------------------- apply


def apply_patch(content_type: str, original: dict[str, Any], patch: Any, *, custom: bool) -> Any:
    """The patched object, or ApiError 415 for an unsupported patch type."""
    base = content_type.split(";", 1)[0].strip()
    if base in (MERGE_PATCH, APPLY_PATCH):
        return merge_patch(original, patch)
    if base == JSON_PATCH:
        return json_patch(original, patch)
    if base == STRATEGIC_PATCH and not custom:
        return strategic_merge(original, patch)
    accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH]
    if not custom:
        accepted.insert(2, STRATEGIC_PATCH)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )
