"""``store.git_pending``: documents a pending ``sealfleet/reseal-*`` branch reseals (0008).

Until such a branch is merged, its repository's base branch (and so ``store.git``)
still holds the old ciphertexts.  These rows say which documents a pending branch
already reseals, so the staleness listing names the branch beside a document that is
still stale there.  A row counts only while the document on the base has the same
namespace and name (the index of a file whose documents moved says nothing), and only
for a document that is not current.  What the repository shows decides: the reseal of
a repository records what it found and drops the rows of branches no longer pending.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sealfleet.adapters.store import codec

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store

_CHUNK = 300   # documents per query (three parameters each)
DocumentKey = tuple[str, str, int, str, str]   # repo, path, document, namespace, name


@dataclass(frozen=True)
class PendingReseal:
    """One document resealed on a pending branch (names and fingerprints only)."""

    repo: str
    path: str
    document: int
    namespace: str
    name: str
    branch: str
    commit: str
    target_key: str
    job_id: str | None = None


def _record(conn: sqlite3.Connection, repo: str, rows: Sequence[PendingReseal],
            pending: Collection[str]) -> None:
    placeholders = ", ".join("?" * len(pending))
    conn.execute("DELETE FROM git_pending_reseals WHERE repo = ? "  # noqa: S608 (placeholders)
                 f"AND branch NOT IN ({placeholders})", (repo, *pending))
    now = codec.now()
    conn.executemany(
        "INSERT INTO git_pending_reseals (repo, path, document, namespace, name, branch, "
        "commit_sha, target_key, job_id, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (repo, path, document) DO UPDATE SET namespace = excluded.namespace, "
        "name = excluded.name, branch = excluded.branch, commit_sha = excluded.commit_sha, "
        "target_key = excluded.target_key, job_id = excluded.job_id, "
        "recorded_at = excluded.recorded_at",
        [(r.repo, r.path, r.document, r.namespace, r.name, r.branch, r.commit, r.target_key,
          r.job_id, now) for r in rows if r.repo == repo])


def _of_repo(conn: sqlite3.Connection, repo: str) -> list[PendingReseal]:
    rows = conn.execute(
        "SELECT repo, path, document, namespace, name, branch, commit_sha, target_key, job_id "
        "FROM git_pending_reseals WHERE repo = ? ORDER BY path, document", (repo,))
    return [PendingReseal(*row) for row in rows]


def _branches_for(conn: sqlite3.Connection,
                  documents: Sequence[DocumentKey]) -> dict[DocumentKey, str]:
    found: dict[DocumentKey, str] = {}
    for start in range(0, len(documents), _CHUNK):
        chunk = documents[start:start + _CHUNK]
        clause = " OR ".join("(repo = ? AND path = ? AND document = ?)" for _ in chunk)
        rows = conn.execute(
            "SELECT repo, path, document, namespace, name, branch "  # noqa: S608 (placeholders)
            f"FROM git_pending_reseals WHERE {clause}",
            [value for key in chunk for value in key[:3]])
        for repo, path, document, namespace, name, branch in rows:
            found[(repo, path, document, namespace, name)] = branch
    return {key: found[key] for key in documents if key in found}


def _stale_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    rows = conn.execute(
        "SELECT p.repo, p.branch, count(*) FROM git_pending_reseals AS p "
        "JOIN git_sealed_secrets AS d ON d.repo = p.repo AND d.path = p.path "
        "AND d.document = p.document AND d.namespace = p.namespace AND d.name = p.name "
        "WHERE d.state != 'current' GROUP BY p.repo, p.branch ORDER BY p.repo, p.branch")
    counts: dict[str, dict[str, int]] = {}
    for repo, branch, count in rows:
        counts.setdefault(repo, {})[branch] = count
    return counts


class GitPendingReseals:
    """Writes and reads of ``git_pending_reseals``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(self, repo: str, rows: Sequence[PendingReseal], *,
                     pending: Collection[str]) -> None:
        """In one transaction: the rows of branches not in *pending* dropped, *rows*
        (the repository's documents found or made on pending branches) recorded."""
        await self._store.write(_record, repo, list(rows), sorted(set(pending)))

    async def of_repo(self, repo: str) -> list[PendingReseal]:
        return await self._store.read(_of_repo, repo)

    async def branches_for(self, documents: Sequence[DocumentKey]) -> dict[DocumentKey, str]:
        """(repo, path, document, namespace, name) -> the pending branch that reseals it."""
        if not documents:
            return {}
        return await self._store.read(_branches_for, list(documents))

    async def stale_counts(self) -> dict[str, dict[str, int]]:
        """repo -> pending branch -> documents it reseals that are not current on the base."""
        return await self._store.read(_stale_counts)
