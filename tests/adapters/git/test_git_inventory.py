"""``store.git``: what the store holds for Git documents, and how a scan replaces it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from pathlib import Path

from sealfleet.adapters.store import Store, codec, git_sql
from sealfleet.adapters.store.records import (
    GitFileRecord,
    GitLink,
    GitSealedSecretRecord,
    ItemFact,
)
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=1)
S = SecretState


def doc(path: str, document: int, *, name: str = "s", keys: tuple[str | None, ...] = ("K1",),
        ciphertext: str = "ct", state: S = S.CURRENT, at: dt.datetime = T0,
        namespace: str = "ns") -> GitSealedSecretRecord:
    return GitSealedSecretRecord(
        repo="r", path=path, document=document, namespace=namespace, name=name,
        scope=Scope.STRICT, ciphertext_fingerprint=ciphertext,
        items=tuple(ItemFact(f"i{n}", f"h-{path}-{document}-{n}", k) for n, k in enumerate(keys)),
        clusters=("alpha", "beta"), state=state, observed_at=at)


def file(path: str, *, documents: int = 1, error: str | None = None,
         at: dt.datetime = T0) -> GitFileRecord:
    return GitFileRecord("r", path, f"sig-{path}-{at.minute}", documents, error, at)


async def test_a_scan_replaces_a_files_documents_and_forgets_removed_files(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "inventory.db") as store:
        git = store.git
        await git.upsert_repo("r", path="/srv/r")
        await git.apply_scan("r", files=[file("a.yaml", documents=3), file("b.yaml"),
                                         file("bad.yaml", documents=0, error="invalid YAML")],
                             documents=[doc("a.yaml", 0, keys=("K1", None)),
                                        doc("a.yaml", 2, keys=("K2", "K1")), doc("b.yaml", 0)])
        first = {(d.path, d.document): d for d in await git.sealed_secrets_of_repo("r")}
        assert first[("a.yaml", 0)] == doc("a.yaml", 0, keys=("K1", None))
        assert first[("a.yaml", 2)].items[0].fingerprint == "K2"
        assert await git.unparseable_files() == {"r": [("bad.yaml", "invalid YAML")]}
        assert await git.file_counts() == {"r": 3}
        assert await git.sealed_secrets_using_key("K2") == [GitLink("r", "a.yaml", 2)]
        # a.yaml rewritten (its document 2 gone, 0 changed); b.yaml deleted.
        await git.apply_scan("r", files=[file("a.yaml", documents=1, at=T1)],
                             documents=[doc("a.yaml", 0, keys=("K2",), state=S.STALE, at=T1)],
                             removed=["b.yaml"])
        second = await git.sealed_secrets_of_repo("r")
        assert [(d.path, d.document, d.state) for d in second] == [("a.yaml", 0, S.STALE)]
        assert {f.path for f in await git.files_of_repo("r")} == {"a.yaml", "bad.yaml"}
        await git.update_states("r", [("a.yaml", 0, S.COMPROMISED)])
        assert await git.state_counts() == {"r": {S.COMPROMISED: 1}}
    rows = sqlite3.connect(tmp_path / "inventory.db").execute(
        "SELECT first_seen, last_seen, state_changed_at FROM git_sealed_secrets").fetchall()
    (first_seen, last_seen, changed), = rows
    assert first_seen < last_seen          # the document's first sighting is kept
    assert changed > last_seen             # state moved after the scan


async def test_pages_filter_by_state_namespace_and_meant_for_cluster(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "inventory.db") as store:
        await store.git.upsert_repo("r", path="/srv/r")
        docs = [doc(f"f{i}.yaml", 0, name=f"s{i}", state=S.STALE if i % 2 else S.CURRENT)
                for i in range(5)]
        docs.append(dataclasses.replace(doc("g.yaml", 0), clusters=("gamma",)))
        await store.git.apply_scan("r", files=[], documents=docs)
        stale, cursor = await store.git.list_sealed_secrets(state=S.STALE, limit=1)
        rest, end = await store.git.list_sealed_secrets(state=S.STALE, cursor=cursor)
        assert [d.name for d in stale + rest] == ["s1", "s3"]
        assert end is None
        gamma, _ = await store.git.list_sealed_secrets(cluster="gamma")
        assert [d.path for d in gamma] == ["g.yaml"]
        alph, _ = await store.git.list_sealed_secrets(cluster="alph")   # whole names only
        assert alph == []


async def test_provenance_prefers_the_same_name_and_never_links_empty_objects(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "inventory.db") as store:
        await store.git.upsert_repo("r", path="/srv/r")
        await store.git.apply_scan("r", files=[], documents=[
            doc("a.yaml", 0, name="other", ciphertext="C"),
            doc("b.yaml", 1, name="db", ciphertext="C"),
            doc("e.yaml", 0, name="empty", ciphertext="E", keys=())])
        links = await store.git.links_for([("C", "ns", "db"), ("C", "ns", "x"),
                                           ("E", "ns", "empty"), ("nope", "ns", "db")])
    assert links == {("C", "ns", "db"): GitLink("r", "b.yaml", 1),
                     ("C", "ns", "x"): GitLink("r", "a.yaml", 0)}


def test_git_reads_use_their_indexes() -> None:
    """Pages and provenance seek an index; none scans the documents table bare."""
    conn = sqlite3.connect(":memory:")
    for name in ("0001_initial", "0002_key_refs", "0007_git_sealed_secrets"):
        sql = (Path(__file__).resolve().parents[3] / "migrations" / f"{name}.sql").read_text()
        conn.executescript(sql.split("ALTER TABLE sealed_secrets")[0]
                           if name.startswith("0007") else sql)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    git_sql.list_sealed_secrets(conn, repo=None, namespace=None, state=S.STALE, cluster=None,
                                limit=10, cursor=None)
    git_sql.list_sealed_secrets(conn, repo=None, namespace=None, state=None, cluster=None,
                                limit=10, cursor=codec.encode_cursor("r", "a.yaml", "1"))
    git_sql.links_for(conn, [("C", "ns", "db")])
    plans = [[str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
             for sql in statements if "FROM git_sealed_secrets" in sql]
    assert [plan[0].split(" USING INDEX ")[1].split(" ")[0] for plan in plans] == [
        "git_sealed_secrets_by_state", "sqlite_autoindex_git_sealed_secrets_1",
        "git_sealed_secrets_by_ciphertext"], plans
