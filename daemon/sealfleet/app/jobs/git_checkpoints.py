"""What the checkpoints of a crashed run of a Git reseal step carry into its re-run.

A step stages its files in batches and records them as checkpoints
(``writing.RepoWriter.checkpoint``); a re-run's workspace starts from the last one and
lists the files it holds with the documents resealed in each (``Workspace.carried``).
Those documents are kept as they are (no RSA work again, and no second, different
ciphertext for them); the other planned documents of a carried file, if any, are looked
at again in its checkpointed content.  Pure: names and fingerprints only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sealfleet.adapters.git import writing
from sealfleet.app.jobs.git_files import ResealedDocument
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.domain.resealing import DocumentChange


@dataclass(frozen=True)
class Carried:
    """A re-run's share of the checkpoints: the files' changes (for the commit), the
    step detail's documents per tree path, the planned entries they cover, the items."""

    changes: tuple[writing.FileChange, ...] = ()
    documents: Mapping[str, tuple[ResealedDocument, ...]] = field(default_factory=dict)
    entries: tuple[PlannedReseal, ...] = ()
    items: int = 0


def target_of(document: DocumentChange) -> str:
    """The key a document was resealed with ("" when its items went to several)."""
    keys = {c.new_key for c in document.changes}
    return keys.pop() if len(keys) == 1 else ""


def entries_of(change: writing.FileChange, entries: Sequence[PlannedReseal],
               ) -> list[PlannedReseal]:
    """The planned documents (of *change*'s file) that *change* reseals."""
    found = []
    for document in change.documents:
        found += [e for e in entries if e.document == document.index or (
            e.document is None and (e.namespace, e.name) == (document.namespace,
                                                              document.name))]
    return found


def carry(workspace: writing.Workspace, by_path: dict[str, list[PlannedReseal]],
          in_tree: Callable[[str], str]) -> Carried:
    """What *workspace* carries; the entries it covers are taken out of *by_path*
    (tree path -> the planned entries left to do)."""
    changes: list[writing.FileChange] = []
    entries: list[PlannedReseal] = []
    items = 0
    documents: dict[str, tuple[ResealedDocument, ...]] = {}
    for path, docs in sorted(workspace.carried.items()):
        change = writing.FileChange(path, b"", docs)     # content: in the index already
        tree_path = in_tree(path)
        covered = entries_of(change, by_path.get(tree_path, []))
        by_path[tree_path] = [e for e in by_path.get(tree_path, []) if e not in covered]
        changes.append(change)
        entries += covered
        items += sum(len(d.changes) for d in docs)
        documents[tree_path] = tuple(
            ResealedDocument(tree_path, d.index, d.namespace, d.name, target_of(d),
                             tuple(c.item for c in d.changes)) for d in docs)
    return Carried(tuple(changes), documents, tuple(entries), items)


def merged(first: Sequence[writing.FileChange], then: Sequence[writing.FileChange],
           ) -> list[writing.FileChange]:
    """*first* and *then* as one change per path, in path order (a file carried from a
    checkpoint and resealed further in this run is one change)."""
    by_path: dict[str, writing.FileChange] = {}
    for change in [*first, *then]:
        known = by_path.get(change.path)
        by_path[change.path] = change if known is None else writing.FileChange(
            change.path, change.content, (*known.documents, *change.documents))
    return [by_path[path] for path in sorted(by_path)]
