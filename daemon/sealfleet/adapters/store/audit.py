"""The audit log: who changed what about keys and jobs, append-only, never rebuildable.

Migration 0001's triggers make UPDATE and DELETE on ``audit_log`` fail, so an entry,
once committed, stays.  :func:`append_entry` is also called from inside other
transactions (a key state change, a quarantine) so that the change and its audit
entry commit together or not at all.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sealfleet.adapters.store import codec
from sealfleet.adapters.store.records import AuditEntry, JsonObject

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store


def append_entry(conn: sqlite3.Connection, event: str, actor: str, details: JsonObject) -> int:
    cursor = conn.execute("INSERT INTO audit_log (at, event, actor, details) VALUES (?, ?, ?, ?)",
                          (codec.now(), event, actor, codec.encode_json(dict(details))))
    return int(cursor.lastrowid or 0)


def entries(conn: sqlite3.Connection, after_id: int, limit: int) -> list[AuditEntry]:
    rows = conn.execute("SELECT id, at, event, actor, details FROM audit_log WHERE id > ? "
                        "ORDER BY id LIMIT ?", (after_id, limit))
    return [AuditEntry(id=entry_id, at=codec.parse_time(at), event=event, actor=actor,
                       details=codec.decode_json_object(details))
            for entry_id, at, event, actor, details in rows]


class AuditLog:
    """``store.audit``: append entries and read them back in order."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(self, event: str, actor: str, details: JsonObject) -> int:
        """Append an entry (never secrets in *details*); returns its id."""
        return await self._store.write(append_entry, event, actor, dict(details))

    async def entries(self, *, after_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries with an id above *after_id*, oldest first (page with the last id seen)."""
        return await self._store.read(entries, after_id, limit)
