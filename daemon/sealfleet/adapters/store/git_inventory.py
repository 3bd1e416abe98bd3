"""``store.git``: SealedSecrets found in GitOps working trees; rebuildable by rescanning.

Repos as configured with their last scan, the files that matched each repo's paths
(with the signature that spares an unchanged file a second read, and the reason a file
does not parse), and the SealedSecret documents in them with per-item attribution, the
clusters they are meant for and their state.  ``links_for`` answers provenance: which
Git document an in-cluster object was applied from (equal ciphertext fingerprints).
The SQL lives in ``git_sql``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sealfleet.adapters.store import git_sql
from sealfleet.adapters.store.records import (
    GitFileRecord,
    GitLink,
    GitRepoRecord,
    GitSealedSecretRecord,
)
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store


class GitInventory:
    """Writes and reads of the Git part of the inventory."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # ------------------------------------------------------------ repos

    async def upsert_repo(self, name: str, *, path: str) -> None:
        """Add or update a configured repo (and un-remove it)."""
        await self._store.write(git_sql.upsert_repo, name, path)

    async def remove_repo(self, name: str) -> None:
        """Mark it removed (dropped from the config) and forget what was found in it."""
        await self._store.write(git_sql.remove_repo, name)

    async def record_repo_scan(self, name: str, *, is_git: bool | None,
                               head_commit: str | None, head_branch: str | None,
                               last_scan_at: dt.datetime, last_error: str | None = None,
                               scan_duration_ms: int | None = None) -> None:
        """The outcome of one scan of the tree (*is_git* None keeps what was recorded)."""
        await self._store.write(git_sql.record_repo_scan, name, is_git=is_git,
                                head_commit=head_commit, head_branch=head_branch,
                                last_scan_at=last_scan_at, last_error=last_error,
                                scan_duration_ms=scan_duration_ms)

    async def list_repos(self) -> list[GitRepoRecord]:
        """Every repo ever recorded, removed ones included, by name."""
        return await self._store.read(git_sql.list_repos)

    # ------------------------------------------------------------ files and documents

    async def apply_scan(self, repo: str, *, files: Sequence[GitFileRecord],
                         documents: Sequence[GitSealedSecretRecord],
                         removed: Sequence[str] = ()) -> None:
        """In one transaction: *files* parsed again, replacing every document stored for
        them by *documents* (their SealedSecrets), and the *removed* paths forgotten."""
        if files or documents or removed:
            await self._store.write(git_sql.apply_scan, repo, list(files), list(documents),
                                    list(removed))

    async def update_states(self, repo: str,
                            states: Sequence[tuple[str, int, SecretState]]) -> None:
        """(path, document, state) per document whose state alone changed."""
        if states:
            await self._store.write(git_sql.update_states, repo, list(states))

    async def files_of_repo(self, repo: str) -> list[GitFileRecord]:
        return await self._store.read(git_sql.files_of_repo, repo)

    async def sealed_secrets_of_repo(self, repo: str) -> list[GitSealedSecretRecord]:
        return await self._store.read(git_sql.sealed_secrets_of_repo, repo)

    async def unparseable_files(self) -> dict[str, list[tuple[str, str]]]:
        """repo -> (path, reason) of each file that does not parse."""
        return await self._store.read(git_sql.unparseable_files)

    async def file_counts(self) -> dict[str, int]:
        """repo -> how many files matched its paths."""
        return await self._store.read(git_sql.file_counts)

    async def state_counts(self) -> dict[str, dict[SecretState, int]]:
        """repo -> state -> how many SealedSecret documents (states with none left out)."""
        return await self._store.read(git_sql.state_counts)

    async def list_sealed_secrets(self, *, repo: str | None = None,
                                  namespace: str | None = None,
                                  state: SecretState | str | None = None,
                                  cluster: str | None = None, limit: int = 100,
                                  cursor: str | None = None,
                                  ) -> tuple[list[GitSealedSecretRecord], str | None]:
        """One keyset page in (repo, path, document) order and the next page's cursor;
        *cluster* keeps the documents meant for that cluster."""
        if state is not None:
            try:
                state = SecretState(state)
            except ValueError:
                raise InputError(f"unknown state {state!r}") from None
        return await self._store.read(git_sql.list_sealed_secrets, repo=repo,
                                      namespace=namespace, state=state, cluster=cluster,
                                      limit=limit, cursor=cursor)

    async def links_for(self, objects: Sequence[tuple[str, str, str]],
                        ) -> dict[tuple[str, str, str], GitLink]:
        """(ciphertext fingerprint, namespace, name) -> the Git document it came from."""
        if not objects:
            return {}
        return await self._store.read(git_sql.links_for, list(objects))

    async def sealed_secrets_using_key(self, fingerprint: str) -> list[GitLink]:
        """The Git documents with an item sealed by the key."""
        return await self._store.read(git_sql.sealed_secrets_using_key, fingerprint)
