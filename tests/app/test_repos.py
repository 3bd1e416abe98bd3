"""The repo scanner end to end: a git working tree (made with the real git CLI) holding
SealedSecrets sealed with the sandbox clusters' keys, scanned by the daemon's own
FleetManager, reported by the real API.

The tree holds a multi-document YAML file (a ConfigMap, a current and a stale
SealedSecret), a JSON file sealed for the wrong cluster, a file under a per-path rule
meant for the other cluster, one sealed with a key nobody knows, a broken file, an
ignored file and a file that is not a manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.http_api import ApiDeps, ApiServer, InventoryView, build_app
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import GitSealedSecretRecord
from sealfleet.app import config
from sealfleet.app.attributing import Attributor
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.app.keystore import Keystore
from sealfleet.app.repos import RepoScanner
from sealfleet.domain import check, documents
from sealfleet.domain.key_secrets import load_key_secret
from sealfleet.domain.keys import KEY_LABEL, SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import SecretState, StalenessPolicy
from sealfleet.sandbox import Sandbox, SeedSpec

SEALED = "sealedsecrets.bitnami.com"
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=3, watch_timeout=2)
SPEC = SeedSpec(namespaces=1, sealed_secrets=2, keys=2, seed=3, key_bits=2048)
S = SecretState


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3) as started:
        yield started


def cluster_keys(sandbox: Sandbox, cluster: str) -> tuple[SealingKey, SealingKey]:
    """(sealing key, an older key) of a sandbox cluster, from its key Secrets."""
    seed = json.loads(sandbox.seed_file.read_text())
    sealing = seed["clusters"][cluster]["sealing_key"]
    secrets, _ = sandbox.cluster(cluster).store.list("secrets", "kube-system")
    keys = [load_key_secret(s) for s in secrets if KEY_LABEL in (s["metadata"].get("labels")
                                                                 or {})]
    current = next(k for k in keys if k.fingerprint == sealing)
    older = next(k for k in keys if k.fingerprint != sealing)
    return current, older


def sealed(name: str, key: SealingKey, **items: str) -> dict[str, Any]:
    secret = {"metadata": {"name": name, "namespace": "default"},
              "stringData": items or {"password": f"{name}-secret"}}
    return seal_secret(secret, key.public_key)


def git(tree: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, env=env)


def make_tree(tree: Path, sandbox: Sandbox, foreign: SealingKey) -> None:
    one, one_old = cluster_keys(sandbox, "sandbox-1")
    two, _ = cluster_keys(sandbox, "sandbox-2")
    (tree / "apps").mkdir(parents=True)
    (tree / "prod").mkdir()
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "b"}}
    (tree / "apps" / "db.yaml").write_text(documents.dump_all(
        [config_map, sealed("db", one), sealed("old", one_old, a="1", b="2")], "yaml"))
    (tree / "apps" / "api.json").write_text(documents.dump_json(sealed("api", two)))
    (tree / "apps" / "foreign.yml").write_text(documents.dump_yaml(sealed("foreign", foreign)))
    (tree / "prod" / "web.yaml").write_text(documents.dump_yaml(sealed("web", two)))
    (tree / "apps" / "broken.yaml").write_text("kind: SealedSecret\nspec: [unclosed\n")
    (tree / "apps" / "ignored.yaml").write_text(documents.dump_yaml(sealed("ignored", one)))
    (tree / "README.md").write_text("not a manifest\n")
    (tree / ".gitignore").write_text("apps/ignored.yaml\n")
    git(tree, "init", "-q", "-b", "main")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "manifests")


def with_repo(sandbox: Sandbox, tree: Path, **extra: str) -> config.Settings:
    text = Path(sandbox.config).read_text() + (
        f'\n[[repos]]\nname = "gitops"\npath = "{tree}"\nclusters = ["sandbox-1"]\n'
        + "".join(f"{key} = {value}\n" for key, value in extra.items())
        + '[[repos.rules]]\npaths = ["prod/**"]\nclusters = ["sandbox-2"]\n')
    path = Path(sandbox.config).with_name("with-repo.toml")
    path.write_text(text)
    return config.load_settings(path)


@contextlib.asynccontextmanager
async def fleet(settings: config.Settings,
                executor: ThreadPoolExecutor) -> AsyncIterator[FleetManager]:
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS)
        async with running(manager):
            yield manager


async def documents_of(manager: FleetManager) -> dict[tuple[str, int], GitSealedSecretRecord]:
    return {(d.path, d.document): d
            for d in await manager.store.git.sealed_secrets_of_repo("gitops")}


async def scanned_with_states(manager: FleetManager) -> dict[str, S] | None:
    """path#document -> state once the clusters' keys are in, every file judged and the
    pass recorded (documents are written before the pass's repo record)."""
    found = await documents_of(manager)
    states = {f"{path}#{doc}": record.state for (path, doc), record in found.items()}
    recorded = all(r.last_scan_at is not None for r in await manager.store.git.list_repos())
    return states if recorded and states.get("prod/web.yaml#0") is S.CURRENT \
        and states.get("apps/db.yaml#1") is S.CURRENT else None


@pytest.fixture
def foreign(rsa2048_keys: list[SealingKey]) -> SealingKey:
    return rsa2048_keys[2]


async def test_the_inventory_lists_every_document_with_its_keys_and_state(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        foreign: SealingKey) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, sandbox, foreign)
    one, one_old = cluster_keys(sandbox, "sandbox-1")
    two, _ = cluster_keys(sandbox, "sandbox-2")
    async with fleet(with_repo(sandbox, tree, base_branch='"main"'), executor) as manager:
        states = await eventually(lambda: scanned_with_states(manager))
        found = await documents_of(manager)
        files = {f.path: f for f in await manager.store.git.files_of_repo("gitops")}
        (repo,) = await manager.store.git.list_repos()
    assert states == {
        "apps/db.yaml#1": S.CURRENT,      # document 0 is the ConfigMap: not inventoried
        "apps/db.yaml#2": S.STALE,        # an older key of the same cluster
        "apps/api.json#0": S.FAILING,     # sealed with sandbox-2's key, meant for sandbox-1
        # No key the fleet knows opens it, and the fleet knows every key sandbox-1
        # holds: its controller would fail to unseal it.
        "apps/foreign.yml#0": S.FAILING,
        "prod/web.yaml#0": S.CURRENT,     # the prod/** rule: meant for sandbox-2
    }
    assert {i.item: i.fingerprint for i in found[("apps/db.yaml", 2)].items} == {
        "a": one_old.fingerprint, "b": one_old.fingerprint}
    assert found[("apps/db.yaml", 1)].items[0].fingerprint == one.fingerprint
    assert found[("apps/api.json", 0)].items[0].fingerprint == two.fingerprint
    assert found[("apps/api.json", 0)].clusters == ("sandbox-1",)
    assert found[("prod/web.yaml", 0)].clusters == ("sandbox-2",)
    assert (found[("apps/db.yaml", 1)].namespace, found[("apps/db.yaml", 1)].name) == (
        "default", "db")
    # The broken file is recorded with its reason and skipped; the ignored file and the
    # README are not read at all.
    assert files["apps/broken.yaml"].error is not None
    assert "invalid YAML" in files["apps/broken.yaml"].error
    assert files["apps/db.yaml"].documents == 3
    assert set(files) == {"apps/db.yaml", "apps/api.json", "apps/foreign.yml",
                          "prod/web.yaml", "apps/broken.yaml"}
    assert repo.is_git is True
    assert repo.head_branch == "main"
    assert repo.last_error is None
    assert repo.head_commit is not None
    assert len(repo.head_commit) == 40


async def test_a_file_changed_on_disk_is_scanned_again_and_only_that_file(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        foreign: SealingKey) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, sandbox, foreign)
    _, one_old = cluster_keys(sandbox, "sandbox-1")
    settings = with_repo(sandbox, tree)
    async with fleet(settings, executor) as manager:
        await eventually(lambda: scanned_with_states(manager))
        before = {f.path: f.scanned_at for f in await manager.store.git.files_of_repo("gitops")}
        rsa_before = manager.attributor.rsa_operations
        # Resealed with the older key, on disk only (not staged): the index's blob is
        # unchanged, the file's size and mtime are not.
        (tree / "apps" / "api.json").write_text(documents.dump_json(sealed("api", one_old)))
        await manager.apply_settings(settings)   # what SIGHUP does

        async def rescanned() -> bool:
            found = await documents_of(manager)
            return found[("apps/api.json", 0)].state is S.STALE

        await eventually(rescanned)
        after = {f.path: f.scanned_at for f in await manager.store.git.files_of_repo("gitops")}
        spent = manager.attributor.rsa_operations - rsa_before
    assert after["apps/api.json"] > before["apps/api.json"]
    assert {p: t for p, t in after.items() if p != "apps/api.json"} == {
        p: t for p, t in before.items() if p != "apps/api.json"}
    assert 1 <= spent <= 3   # the changed item alone (one or two wrong keys first at most)
    # A restart reads no unchanged file again (the signatures are in the store), except
    # those with items no key opened (a key may have arrived meanwhile): no RSA at all.
    async with fleet(settings, executor) as manager:
        async def passed() -> bool:
            return all(scan.passes for scan in manager.repos.scans.values())

        await eventually(passed)
        again = {f.path: f.scanned_at for f in await manager.store.git.files_of_repo("gitops")}
        assert manager.attributor.rsa_operations == 0
    assert {p: t for p, t in again.items() if p != "apps/foreign.yml"} == {
        p: t for p, t in after.items() if p != "apps/foreign.yml"}


@pytest.mark.parametrize(("repo", "error"), [
    ('clusters = ["nope"]', 'repos[0].clusters: "nope" is not a configured cluster'),
    ('clusters = ["a"]\npaths = ["a**"]', "repos[0].paths: invalid pattern: 'a**'"),
    ('clusters = ["a"]\npath = "missing"', 'repos[0].path: "'),
    ('clusters = ["a"]\npush = true', "repos[0]: push is true but no remote is named"),
    ('clusters = ["a"]\nbase_branch = "a..b"', 'repos[0].base_branch: "a..b" is not a valid'),
    ('clusters = ["a"]\n[[repos.rules]]\npaths = ["x/**"]\nclusters = ["b"]',
     'repos[0].rules[0].clusters: "b" is not a configured cluster'),
])
def test_repo_config_errors_are_one_line_naming_file_and_key(
        tmp_path: Path, repo: str, error: str) -> None:
    (tmp_path / "tree").mkdir()
    text = ('[[clusters]]\nname = "a"\nkubeconfig = "kc"\n[[repos]]\nname = "r"\n'
            + ("" if "path =" in repo else 'path = "tree"\n') + repo + "\n")
    (tmp_path / "sealfleet.toml").write_text(text)
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(tmp_path / "sealfleet.toml")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'sealfleet.toml'}: ")
    assert error in message
    assert "\n" not in message


async def test_an_object_applied_from_a_file_is_linked_to_it_and_shows_its_gitops_tool(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        foreign: SealingKey) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, sandbox, foreign)
    applied = documents.parse_documents((tree / "apps" / "db.yaml").read_text())[1]
    applied["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps",
                                     "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}
    sandbox.cluster("sandbox-1").store.create(SEALED, "default", applied)
    settings = with_repo(sandbox, tree)
    async with fleet(settings, executor) as manager:
        await eventually(lambda: scanned_with_states(manager))
        store = manager.store
        view = InventoryView(store, policy=StalenessPolicy(
            key_renew_period=settings.policy.key_renew_period,
            cert_expiry_warning=settings.policy.cert_expiry_warning))
        socket_path = tmp_path / "api.sock"
        async with ApiServer(build_app(ApiDeps(view=view, store=store)),
                             socket_path=socket_path, listen=None):
            in_cluster = await get(socket_path, "/api/v1/sealed-secrets?cluster=sandbox-1"
                                                 "&namespace=default&limit=1000")
            in_git = await get(socket_path, "/api/v1/sealed-secrets?source=git&limit=1000")
            report = await get(socket_path, "/api/v1/staleness")
            metrics = await get_text(socket_path, "/metrics")
    db = next(e for e in in_cluster["items"] if e["name"] == "db")
    assert db["source"] == "cluster"
    assert db["git"] == {"repo": "gitops", "path": "apps/db.yaml", "document": 1}
    assert db["managed_by"] == {"tool": "flux", "name": "flux-system/apps", "hint": False}
    seeded = [e for e in in_cluster["items"] if e["name"] != "db"]
    assert all(e["git"] is None and e["managed_by"] is None for e in seeded)
    assert {(e["path"], e["document"], e["state"]) for e in in_git["items"]} == {
        ("apps/db.yaml", 1, "current"), ("apps/db.yaml", 2, "stale"),
        ("apps/api.json", 0, "failing"), ("apps/foreign.yml", 0, "failing"),
        ("prod/web.yaml", 0, "current")}
    assert all(e["source"] == "git" for e in in_git["items"])
    (repo,) = report["repos"]
    assert repo["name"] == "gitops"
    assert repo["files"] == 5
    assert repo["sealed_secrets"] == {"total": 5, "current": 2, "stale": 1, "compromised": 0,
                                      "unknown": 0, "failing": 2}
    assert [f["path"] for f in repo["unparseable_files"]] == ["apps/broken.yaml"]
    assert report["fleet"]["git_sealed_secrets"]["total"] == 5
    assert 'sealfleet_git_sealed_secrets{repo="gitops",state="stale"} 1.0' in metrics
    assert 'sealfleet_git_unparseable_files{repo="gitops"} 1.0' in metrics


async def test_another_branch_checked_out_is_not_scanned_and_the_report_says_why(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        foreign: SealingKey) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, sandbox, foreign)
    git(tree, "checkout", "-q", "-b", "reseal-wip")
    async with fleet(with_repo(sandbox, tree, base_branch='"main"'), executor) as manager:
        async def scanned() -> Any:
            repos = await manager.store.git.list_repos()
            return repos and repos[0].last_scan_at is not None and repos[0]

        repo = await eventually(scanned)
        assert await documents_of(manager) == {}
    assert repo.last_error is not None
    assert "reseal-wip" in repo.last_error
    assert "base_branch main" in repo.last_error


async def test_the_check_fails_a_document_sealed_for_another_cluster(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        foreign: SealingKey) -> None:
    one, one_old = cluster_keys(sandbox, "sandbox-1")
    two, _ = cluster_keys(sandbox, "sandbox-2")
    asked = check.CheckRequest(documents=(
        check.CheckDocument("good.yaml", 0, sealed("good", one)),
        check.CheckDocument("old.yaml", 0, sealed("old", one_old)),
        check.CheckDocument("wrong.yaml", 0, sealed("wrong", two))), clusters=("sandbox-1",))
    async with fleet(config.load_settings(sandbox.config), executor) as manager:
        await eventually(lambda: _holdings_known(manager))
        answer = await manager.checker.check(asked)
        strict = await manager.checker.check(
            check.CheckRequest(asked.documents[:2], ("sandbox-1",), require_current=True))
    verdicts = {d["source"]: (d["ok"], d["clusters"][0]["decryptable"],
                              d["clusters"][0]["current"]) for d in answer["documents"]}
    assert verdicts == {"good.yaml": (True, True, True), "old.yaml": (True, True, False),
                        "wrong.yaml": (False, False, False)}
    assert answer["ok"] is False
    assert [d["ok"] for d in strict["documents"]] == [True, False]
    assert "secret" not in json.dumps(answer)   # no value ("<name>-secret") ever comes back


async def _holdings_known(manager: FleetManager) -> bool:
    holdings = await manager.store.inventory.key_holdings_by_cluster()
    clusters = await manager.store.inventory.list_clusters()
    return len(holdings) == 2 and all(c.sealing_key for c in clusters)


async def get(socket_path: Path, path: str) -> Any:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://sealfleet" + path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def get_text(socket_path: Path, path: str) -> str:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://sealfleet" + path) as response:
        return await response.text()


async def test_a_repo_dropped_from_the_config_leaves_the_inventory(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    settings = config.settings_from_mapping({}, base_dir=tmp_path, env={})
    async with Store.open(tmp_path / "inventory.db") as store:
        await store.git.upsert_repo("old", path="/srv/old")
        await store.git.apply_scan("old", files=[], documents=[GitSealedSecretRecord(
            repo="old", path="a.yaml", document=0, namespace="ns", name="n",
            scope=Scope.STRICT, ciphertext_fingerprint="ct", items=(), clusters=("c",),
            state=S.CURRENT, observed_at=dt.datetime.now(dt.UTC))])
        keystore = Keystore(store)
        scanner = RepoScanner(settings, store, keystore, Attributor(store, executor, keystore))
        task = asyncio.create_task(scanner.run())
        try:
            async def forgotten() -> bool:
                (repo,) = await store.git.list_repos()
                return repo.removed
            await eventually(forgotten)
            assert await store.git.sealed_secrets_of_repo("old") == []
            assert (await store.git.state_counts()) == {}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
