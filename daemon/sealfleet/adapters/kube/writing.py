"""What a write to the apiserver sends, and what its failure may say back.

Two details of :class:`~sealfleet.adapters.kube.client.KubeClient`'s writes, kept apart
from the connection code: how a patch is made conditional on a resourceVersion, and
how a refused write's Status message is cleaned of the Secret values we sent (an
apiserver's validation message or an admission webhook may quote the refused object;
the message becomes an error that is logged and may be stored as ``last_error``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JSON_PATCH = "application/json-patch+json"
REDACTED = "[REDACTED]"


def with_resource_version(patch: Any, content_type: str, resource_version: str) -> Any:
    """*patch* made conditional on *resource_version* (see ``KubeClient.patch_json``)."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise ValueError("a JSON patch is a list of operations")
        return [{"op": "replace", "path": "/metadata/resourceVersion",
                 "value": resource_version}, *patch]
    if not isinstance(patch, Mapping):
        raise ValueError("a merge or strategic merge patch is an object")
    metadata = patch.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    return {**patch, "metadata": {**metadata, "resourceVersion": resource_version}}


# A run of this many characters of a value we sent is taken as a quote of it: long
# enough that field names and label values do not trip it, short enough that a cut
# quote of a base64 key is caught (12 base64 characters are 9 bytes of the key).
_QUOTE = 12


def scrub(message: str, body: Any) -> str:
    """*message* cut where it starts quoting a ``data``/``stringData`` value of *body*."""
    values = [v for v in _secret_values(body) if len(v) >= _QUOTE]
    if not values:
        return message
    for start in range(max(len(message) - _QUOTE + 1, 0)):
        window = message[start:start + _QUOTE]
        if any(window in value for value in values):
            return message[:start] + REDACTED
    return message


def _secret_values(body: Any) -> list[str]:
    """String values under ``data``/``stringData`` anywhere in *body* (JSON patch
    ``value`` operands included)."""
    found: list[str] = []
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                if key in ("data", "stringData") and isinstance(value, Mapping):
                    found.extend(v for v in value.values() if isinstance(v, str))
                elif key == "value" and isinstance(value, str) and "/data" in str(
                        item.get("path", "")):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found
