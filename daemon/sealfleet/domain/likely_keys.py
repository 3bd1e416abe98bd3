"""Which key most likely sealed a SealedSecret, judged from when it was sealed.

Attribution tries candidate keys one RSA decrypt at a time, so the order is the cost:
the right key first costs one decrypt, every wrong one before it costs another.  The
sealing key is the likeliest guess only for recently sealed objects; a fleet where a
key renews every 30 days has many SealedSecrets sealed with the key that was newest
*back then*.  Kubernetes records when: ``metadata.creationTimestamp``, and in
``metadata.managedFields`` the time of the last write that touched ``spec`` (a
reseal or rotation replaces ``encryptedData``).  kubeseal and the controller always
seal with the key with the latest certificate NotBefore, so the key that was newest at
that time is the first guess, then the keys newest at the other recorded times, then
the older keys (newest first), then the newer ones (oldest first).

A wrong timestamp (a SealedSecret copied from another cluster, one sealed offline with
an old certificate) only costs the order: every candidate is still tried.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from sealfleet.domain.keys import most_recent_key


class Dated(Protocol):
    """What ordering needs of a key: its name and when its certificate became valid."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def not_before(self) -> dt.datetime: ...


K = TypeVar("K", bound=Dated)

# Writes that replace the object's content (not ``status``, not a bare annotation).
_SPEC_FIELD = "f:spec"
_WRITE_OPERATIONS = frozenset({"Update", "Apply"})


def parse_time(value: object) -> dt.datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it, timezone-aware; None when absent
    or not a timestamp (a malformed annotation must not break attribution)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def sealing_times(metadata: Mapping[str, Any]) -> tuple[dt.datetime, ...]:
    """When the object's encrypted content was most likely written, likeliest first.

    The latest managedFields write that touched ``spec`` (when later than creation)
    comes first: a reseal replaces every item.  ``creationTimestamp`` follows, since a
    write to the template alone leaves the items as they were sealed at creation.
    """
    created = parse_time(metadata.get("creationTimestamp"))
    latest_write: dt.datetime | None = None
    managed = metadata.get("managedFields")
    for entry in managed if isinstance(managed, list) else ():
        if not isinstance(entry, Mapping) or entry.get("operation") not in _WRITE_OPERATIONS:
            continue
        if entry.get("subresource"):
            continue  # status (or scale) writes leave the sealed items alone
        fields = entry.get("fieldsV1")
        if not isinstance(fields, Mapping) or _SPEC_FIELD not in fields:
            continue
        when = parse_time(entry.get("time"))
        if when is not None and (latest_write is None or when > latest_write):
            latest_write = when
    times: list[dt.datetime] = []
    if latest_write is not None and (created is None or latest_write > created):
        times.append(latest_write)
    if created is not None:
        times.append(created)
    return tuple(times)


def newest_at(keys: Sequence[K], when: dt.datetime) -> K | None:
    """The key a sealer would have used at *when*: the most recent of those valid by
    then (the first such in *keys* on a tie)."""
    return most_recent_key(key for key in keys if key.not_before <= when)


def by_sealing_time(keys: Sequence[K], times: Sequence[dt.datetime]) -> list[K]:
    """*keys* likeliest first for an object sealed at *times* (likeliest time first).

    The key newest at each time, in the order of *times*; then the keys older than
    the first time, newest first; then the newer keys, oldest first.  Without times
    the order of *keys* is kept.  Always a permutation of *keys*; ties keep their
    order in *keys*, so the caller's own ranking breaks them.
    """
    if not times:
        return list(keys)
    ordered: list[K] = []
    chosen: set[int] = set()
    for when in times:
        current = newest_at(keys, when)
        if current is not None and id(current) not in chosen:
            ordered.append(current)
            chosen.add(id(current))
    rest = [key for key in keys if id(key) not in chosen]
    anchor = times[0]
    older = sorted((k for k in rest if k.not_before <= anchor),
                   key=lambda k: k.not_before, reverse=True)
    newer = sorted((k for k in rest if k.not_before > anchor), key=lambda k: k.not_before)
    return ordered + older + newer


def likeliest_first(keys: Sequence[K], times: Sequence[dt.datetime], *,
                    local: Collection[str]) -> list[K]:
    """*keys* (already in the caller's order) for one object sealed at *times*.

    The time prior ranks only the *local* keys, those of the object's own cluster:
    every cluster renews on a similar schedule, so another cluster's key of the same
    age would look just as likely.  The other keys follow in the caller's order.  With
    no local keys known, the time prior ranks them all.
    """
    # The attributor puts the local keys first: then they are picked off the front, and
    # the rest (the whole fleet's keys, thousands) is copied, not searched, per object.
    lead = 0
    for key in keys:
        if key.fingerprint not in local:
            break
        lead += 1
    if lead and lead == len(local):
        return by_sealing_time(keys[:lead], times) + list(keys[lead:])
    mine = [key for key in keys if key.fingerprint in local]
    if not mine:
        return by_sealing_time(keys, times)
    others = [key for key in keys if key.fingerprint not in local]
    return by_sealing_time(mine, times) + others


def promote(keys: list[K], fingerprint: str) -> None:
    """Move the key named *fingerprint* to the front, in place (the same-object prior:
    the items of one SealedSecret are nearly always sealed together)."""
    for index, key in enumerate(keys):
        if key.fingerprint == fingerprint:
            if index:
                keys.insert(0, keys.pop(index))
            return
