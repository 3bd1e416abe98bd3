"""The Git inventory's transactions and queries (migration 0007), as plain functions.

Like ``inventory_writes``/``inventory_reads``: each write function is the body of one
transaction on the writer thread, each read runs in one read transaction on a reader.
Items are stored in the layout of ``sealed_secrets`` (codec.encode_items: one text
column plus key references), so a Git document and an in-cluster object of the same
ciphertext carry the same item hashes and fingerprints.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sealfleet.adapters.store import codec, inventory_reads, inventory_writes
from sealfleet.adapters.store.records import (
    GitFileRecord,
    GitLink,
    GitRepoRecord,
    GitSealedSecretRecord,
)
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError

_CHUNK = 900  # host parameters per IN list, far below SQLite's limit
_DOCUMENT = re.compile(r"[0-9]{1,9}")

_DOC_COLUMNS = ("repo", "path", "document", "namespace", "name", "scope", "item_count",
                "ciphertext_fingerprint", "items", "keys", "key_items", "clusters", "state",
                "malformed_reason", "last_seen")
_N = len(_DOC_COLUMNS)
# Built from the constant column list (never input).  first_seen and state_changed_at
# take last_seen's parameter; an update keeps first_seen.
_UPSERT_DOC = (
    f"INSERT INTO git_sealed_secrets ({', '.join(_DOC_COLUMNS)}, first_seen, "  # noqa: S608
    f"state_changed_at) VALUES ({', '.join('?' * _N)}, ?{_N}, ?{_N}) "
    "ON CONFLICT (repo, path, document) DO UPDATE SET "
    "state_changed_at = CASE WHEN state = excluded.state THEN state_changed_at "
    "ELSE excluded.last_seen END, "
    + ", ".join(f"{c} = excluded.{c}" for c in _DOC_COLUMNS[3:]))
_DOC_SELECT = ("SELECT repo, path, document, namespace, name, scope, ciphertext_fingerprint, "
               "items, keys, clusters, state, malformed_reason, last_seen "
               "FROM git_sealed_secrets")
_REPO_SELECT = ("SELECT name, path, is_git, head_commit, head_branch, last_scan_at, "
                "last_error, scan_duration_ms, removed_at FROM git_repos")


# ---------------------------------------------------------------- repos


def upsert_repo(conn: sqlite3.Connection, name: str, path: str) -> None:
    now = codec.now()
    conn.execute("INSERT INTO git_repos (name, path, created_at, updated_at) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET path = excluded.path, "
                 "updated_at = excluded.updated_at, removed_at = NULL", (name, path, now, now))


def remove_repo(conn: sqlite3.Connection, name: str) -> None:
    """Mark the repo removed and drop what was found in it (a cache: rescanning rebuilds it)."""
    now = codec.now()
    conn.execute("UPDATE git_repos SET removed_at = coalesce(removed_at, ?), updated_at = ? "
                 "WHERE name = ?", (now, now, name))
    conn.execute("DELETE FROM git_sealed_secrets WHERE repo = ?", (name,))
    conn.execute("DELETE FROM git_files WHERE repo = ?", (name,))


def record_repo_scan(conn: sqlite3.Connection, name: str, *, is_git: bool | None,
                     head_commit: str | None, head_branch: str | None,
                     last_scan_at: dt.datetime, last_error: str | None,
                     scan_duration_ms: int | None) -> None:
    conn.execute(
        "UPDATE git_repos SET is_git = coalesce(?, is_git), head_commit = ?, head_branch = ?, "
        "last_scan_at = ?, last_error = ?, scan_duration_ms = ?, updated_at = ? "
        "WHERE name = ?",
        (is_git, head_commit, head_branch, codec.timestamp(last_scan_at), last_error,
         scan_duration_ms, codec.now(), name))


def _repo_record(row: Sequence[Any]) -> GitRepoRecord:
    name, path, is_git, head, branch, scanned, error, duration, removed = row
    return GitRepoRecord(name=name, path=path, is_git=None if is_git is None else bool(is_git),
                         head_commit=head, head_branch=branch,
                         last_scan_at=codec.parse_timestamp(scanned), last_error=error,
                         scan_duration_ms=duration, removed_at=codec.parse_timestamp(removed))


def list_repos(conn: sqlite3.Connection) -> list[GitRepoRecord]:
    return [_repo_record(row) for row in conn.execute(_REPO_SELECT + " ORDER BY name")]


# ---------------------------------------------------------------- files and documents


def _doc_row(record: GitSealedSecretRecord, refs: Mapping[str, str]) -> tuple[Any, ...]:
    items, keys, key_items = codec.encode_items(record.items, refs)
    return (record.repo, record.path, record.document, record.namespace, record.name,
            record.scope, len(record.items), record.ciphertext_fingerprint, items, keys,
            key_items, " ".join(record.clusters), record.state, record.malformed_reason,
            codec.timestamp(record.observed_at))


def apply_scan(conn: sqlite3.Connection, repo: str, files: Sequence[GitFileRecord],
               documents: Sequence[GitSealedSecretRecord], removed: Sequence[str]) -> None:
    """Files parsed again (with all their SealedSecret documents) and files gone."""
    refs = inventory_writes.ensure_key_refs(
        conn, (f.fingerprint for d in documents for f in d.items if f.fingerprint is not None))
    changed = {f.path for f in files} | set(removed)
    keep = {(d.path, d.document) for d in documents}
    stale = [(repo, path, document) for path, document in conn.execute(
                 "SELECT path, document FROM git_sealed_secrets WHERE repo = ?", (repo,))
             if path in changed and (path, document) not in keep]
    conn.executemany("DELETE FROM git_sealed_secrets WHERE repo = ? AND path = ? "
                     "AND document = ?", stale)
    conn.executemany("DELETE FROM git_files WHERE repo = ? AND path = ?",
                     [(repo, path) for path in removed])
    conn.executemany(
        "INSERT INTO git_files (repo, path, signature, documents, error, scanned_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (repo, path) DO UPDATE SET "
        "signature = excluded.signature, documents = excluded.documents, "
        "error = excluded.error, scanned_at = excluded.scanned_at",
        [(repo, f.path, f.signature, f.documents, f.error, codec.timestamp(f.scanned_at))
         for f in files])
    conn.executemany(_UPSERT_DOC, [_doc_row(d, refs) for d in documents])


def update_states(conn: sqlite3.Connection, repo: str,
                  states: Sequence[tuple[str, int, SecretState]]) -> None:
    now = codec.now()
    conn.executemany(
        "UPDATE git_sealed_secrets SET state = ?1, state_changed_at = ?2 "
        "WHERE repo = ?3 AND path = ?4 AND document = ?5 AND state != ?1",
        [(str(state), now, repo, path, document) for path, document, state in states])


def files_of_repo(conn: sqlite3.Connection, repo: str) -> list[GitFileRecord]:
    rows = conn.execute("SELECT path, signature, documents, error, scanned_at FROM git_files "
                        "WHERE repo = ? ORDER BY path", (repo,))
    return [GitFileRecord(repo, path, signature, documents, error, codec.parse_time(scanned))
            for path, signature, documents, error, scanned in rows]


def unparseable_files(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """repo -> (path, reason) of every file that does not parse."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for repo, path, error in conn.execute("SELECT repo, path, error FROM git_files "
                                          "WHERE error IS NOT NULL ORDER BY repo, path"):
        found[repo].append((path, error))
    return dict(found)


def file_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """repo -> files that matched its paths."""
    return dict(conn.execute("SELECT repo, count(*) FROM git_files GROUP BY repo"))


def _doc_record(row: Sequence[Any], refs: Mapping[str, str]) -> GitSealedSecretRecord:
    (repo, path, document, namespace, name, scope, fingerprint, items, keys, clusters,
     state, malformed_reason, last_seen) = row
    return GitSealedSecretRecord(
        repo=repo, path=path, document=document, namespace=namespace, name=name,
        scope=Scope(scope), ciphertext_fingerprint=fingerprint,
        items=codec.decode_items(items, keys, refs),
        clusters=tuple(clusters.split()), state=SecretState(state),
        observed_at=codec.parse_time(last_seen), malformed_reason=malformed_reason)


def sealed_secrets_of_repo(conn: sqlite3.Connection, repo: str) -> list[GitSealedSecretRecord]:
    rows = conn.execute(_DOC_SELECT + " WHERE repo = ? ORDER BY path, document", (repo,))
    refs = inventory_reads.key_refs(conn)
    return [_doc_record(row, refs) for row in rows]


def state_counts(conn: sqlite3.Connection) -> dict[str, dict[SecretState, int]]:
    counts: dict[str, dict[SecretState, int]] = defaultdict(dict)
    for state, repo, count in conn.execute(
            "SELECT state, repo, count(*) FROM git_sealed_secrets GROUP BY state, repo"):
        counts[repo][SecretState(state)] = count
    return dict(counts)


def list_sealed_secrets(conn: sqlite3.Connection, *, repo: str | None, namespace: str | None,
                        state: SecretState | None, cluster: str | None, limit: int,
                        cursor: str | None) -> tuple[list[GitSealedSecretRecord], str | None]:
    """One keyset page in (repo, path, document) order, and the next page's cursor."""
    if limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("state", None if state is None else str(state)), ("repo", repo),
                          ("namespace", namespace)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if cluster is not None:   # documents meant for this cluster
        where.append("instr(' ' || clusters || ' ', ' ' || ? || ' ') > 0")
        params.append(cluster)
    if cursor is not None:
        try:
            after_repo, after_path, after_doc = codec.decode_cursor(cursor)
        except ValueError:
            raise InputError("malformed cursor") from None
        if _DOCUMENT.fullmatch(after_doc):
            where.append("(repo, path, document) > (?, ?, ?)")
            params.extend((after_repo, after_path, int(after_doc)))
        else:
            # Cursors have one shape for both listings; a third part that is no
            # document index sorts after every index of (repo, path).
            where.append("(repo, path) > (?, ?)")
            params.extend((after_repo, after_path))
    index = ("git_sealed_secrets_by_state" if state is not None
             else "sqlite_autoindex_git_sealed_secrets_1")
    sql = (_DOC_SELECT + f" INDEXED BY {index}"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY repo, path, document LIMIT ?")
    rows = conn.execute(sql, [*params, limit + 1]).fetchall()
    refs = inventory_reads.key_refs(conn)
    records = [_doc_record(row, refs) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = records[-1]
        next_cursor = codec.encode_cursor(last.repo, last.path, str(last.document))
    return records, next_cursor


def links_for(conn: sqlite3.Connection, wanted: Iterable[tuple[str, str, str]],
              ) -> dict[tuple[str, str, str], GitLink]:
    """For (ciphertext fingerprint, namespace, name) of in-cluster objects, the Git
    document of the same ciphertext: one of the same namespace and name first, then the
    first in (repo, path, document) order.  Objects with no items are never linked (an
    empty encryptedData has one fingerprint everywhere)."""
    wanted = list(dict.fromkeys(wanted))
    fingerprints = list({fp for fp, _, _ in wanted})
    candidates: dict[str, list[tuple[str, str, GitLink]]] = defaultdict(list)
    for start in range(0, len(fingerprints), _CHUNK):
        chunk = fingerprints[start:start + _CHUNK]
        rows = conn.execute(
            "SELECT ciphertext_fingerprint, namespace, name, repo, path, document "  # noqa: S608
            "FROM git_sealed_secrets INDEXED BY git_sealed_secrets_by_ciphertext "
            f"WHERE ciphertext_fingerprint IN ({', '.join('?' * len(chunk))}) "  # placeholders
            "AND item_count > 0 ORDER BY repo, path, document", chunk)
        for fingerprint, namespace, name, repo, path, document in rows:
            candidates[fingerprint].append((namespace, name, GitLink(repo, path, document)))
    links: dict[tuple[str, str, str], GitLink] = {}
    for key in wanted:
        fingerprint, namespace, name = key
        found = candidates.get(fingerprint)
        if found:
            same = [link for ns, n, link in found if (ns, n) == (namespace, name)]
            links[key] = same[0] if same else found[0][2]
    return links


def sealed_secrets_using_key(conn: sqlite3.Connection, fingerprint: str) -> list[GitLink]:
    """The Git documents with an item sealed by the key (the reseal engine's worklist)."""
    found = conn.execute("SELECT id FROM key_refs WHERE fingerprint = ?",
                         (fingerprint,)).fetchone()
    if found is None:
        return []
    rows = conn.execute(
        "SELECT repo, path, document FROM git_sealed_secrets "
        "WHERE instr(' ' || keys || ' ', ' ' || ? || ' ') > 0 ORDER BY repo, path, document",
        (str(found[0]),))
    return [GitLink(repo, path, document) for repo, path, document in rows]
