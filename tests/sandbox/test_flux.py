"""The sandbox's GitOps repository and emulated Flux, through the production kube client
over HTTPS and the real git CLI: the seeded objects are in Git byte for byte, an
in-cluster edit is put back at the next interval, ``reconcile: disabled`` is respected,
a commit pushed to the remote is applied (and what it drops pruned); the user's clone
is never what Flux reads."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from polling import eventually
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.domain import documents, sealed_secrets
from sealfleet.sandbox import Sandbox, SeedSpec
from sealfleet.sandbox.gitops import git_env

SPEC = SeedSpec(namespaces=2, sealed_secrets=8, keys=2, seed=5, key_bits=2048,
                gitops_fraction=0.5)
KUSTOMIZATION = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/apps"
FLUX = "kustomize.toolkit.fluxcd.io/name"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), check=True,
                          capture_output=True).stdout.decode()


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=1, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, startup_delay=0.1, flux_interval=0.5,
                       flux_source_interval=0.2) as started:
        yield started


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[KubeClient]:
    async with KubeClient.connect(str(sandbox.kubeconfig), "sandbox-1",
                                  request_timeout=5) as connected:
        yield connected


def managed(sandbox: Sandbox) -> list[dict[str, Any]]:
    seed = json.loads(sandbox.seed_file.read_text())
    return [e for e in seed["sealed_secrets"] if "git_path" in e]


async def passes_after(sandbox: Sandbox, count: int) -> None:
    """Until the Kustomization has been reconciled *count* more times."""
    flux = sandbox.cluster("sandbox-1").flux
    assert flux is not None
    target = flux.reconciles + count

    async def done() -> bool:
        return flux.reconciles >= target

    await eventually(done, within=30)


async def test_the_seeded_flux_objects_are_in_git_byte_for_byte_and_applied_unchanged(
        sandbox: Sandbox, client: KubeClient) -> None:
    entries = managed(sandbox)
    assert entries
    assert len(entries) < SPEC.sealed_secrets
    assert sandbox.gitops is not None
    clone = sandbox.gitops.clone
    head = git("rev-parse", "main", cwd=sandbox.gitops.remote).strip()
    assert git("rev-parse", "HEAD", cwd=clone).strip() == head
    ks = await client.get_json(KUSTOMIZATION)
    assert ks["status"]["lastAppliedRevision"] == f"main@sha1:{head}"
    assert ks["status"]["conditions"][0]["reason"] == "ReconciliationSucceeded"
    before = {}
    for entry in entries:
        obj = await client.get_json(controller.sealed_secret_path(entry["namespace"],
                                                                  entry["name"]))
        before[entry["name"]] = obj["metadata"]["resourceVersion"]
        assert obj["metadata"]["labels"][FLUX] == "apps"
        assert obj["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"] \
            == "flux-system"
        content = (clone / entry["git_path"]).read_bytes()
        assert content.startswith(b"# ")                       # a comment, as people write
        (doc,) = documents.parse_documents(content)
        assert FLUX not in (doc["metadata"].get("labels") or {})
        assert doc["spec"] == obj["spec"]
        assert sealed_secrets.ciphertext_fingerprint(doc["spec"]["encryptedData"]) \
            == sealed_secrets.ciphertext_fingerprint(obj["spec"]["encryptedData"])
    # What Git holds is what the cluster holds: Flux's passes write nothing.
    await passes_after(sandbox, 2)
    for entry in entries:
        obj = await client.get_json(controller.sealed_secret_path(entry["namespace"],
                                                                  entry["name"]))
        assert obj["metadata"]["resourceVersion"] == before[entry["name"]]
    others = {e["name"] for e in json.loads(sandbox.seed_file.read_text())["sealed_secrets"]}
    listed = await client.get_json(f"/apis/bitnami.com/v1alpha1/sealedsecrets?labelSelector={FLUX}")
    assert {o["metadata"]["name"] for o in listed["items"]} \
        == {e["name"] for e in entries} < others


async def test_an_in_cluster_edit_of_the_ciphertext_is_reverted_at_the_next_interval(
        sandbox: Sandbox, client: KubeClient) -> None:
    entry = managed(sandbox)[0]
    path = controller.sealed_secret_path(entry["namespace"], entry["name"])
    original = await client.get_json(path)
    item = sorted(original["spec"]["encryptedData"])[0]
    edited = await client.patch_json(path, {"spec": {"encryptedData": {item: "AgBvbGQ="}}})
    assert edited["metadata"]["generation"] == original["metadata"]["generation"] + 1

    async def reverted() -> dict[str, Any] | None:
        obj: dict[str, Any] = await client.get_json(path)
        return obj if obj["spec"] == original["spec"] else None

    obj = await eventually(reverted, within=30)
    assert obj["metadata"]["generation"] == original["metadata"]["generation"] + 2
    assert obj["metadata"]["labels"] == original["metadata"]["labels"]

    async def synced() -> bool:
        now = await client.get_json(path)
        status = now.get("status") or {}
        return status.get("observedGeneration") == now["metadata"]["generation"] and any(
            c["type"] == "Synced" and c["status"] == "True" for c in status["conditions"])

    await eventually(synced, within=30)     # the controller unsealed Git's ciphertext again


async def test_reconcile_disabled_on_the_object_leaves_an_edit_in_place(
        sandbox: Sandbox, client: KubeClient) -> None:
    entry = managed(sandbox)[0]
    path = controller.sealed_secret_path(entry["namespace"], entry["name"])
    original = await client.get_json(path)
    item = sorted(original["spec"]["encryptedData"])[0]
    await client.patch_json(path, {
        "metadata": {"annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"}},
        "spec": {"encryptedData": {item: "AgBvbGQ="}}})
    await passes_after(sandbox, 3)
    assert (await client.get_json(path))["spec"]["encryptedData"][item] == "AgBvbGQ="
    await client.patch_json(path, {"metadata": {"annotations": {
        "kustomize.toolkit.fluxcd.io/reconcile": None}}})

    async def reverted() -> bool:
        return bool((await client.get_json(path))["spec"] == original["spec"])

    await eventually(reverted, within=30)


async def test_a_commit_pushed_to_the_remote_is_applied_and_what_it_drops_is_pruned(
        sandbox: Sandbox, client: KubeClient, tmp_path: Path) -> None:
    assert sandbox.gitops is not None
    kept, dropped = managed(sandbox)[:2]
    # A commit in the user's clone that is not pushed is not what Flux reads.
    clone = sandbox.gitops.clone
    (clone / kept["git_path"]).write_text((clone / kept["git_path"]).read_text().replace(
        "app.kubernetes.io/part-of:", "team: unpushed\n    app.kubernetes.io/part-of:", 1))
    git("commit", "-qam", "not pushed", cwd=clone)
    # A reviewer's clone pushes a change: one label more, one SealedSecret less.
    reviewer = tmp_path / "reviewer"
    git("clone", "-q", str(sandbox.gitops.remote), str(reviewer), cwd=tmp_path)
    target = reviewer / kept["git_path"]
    target.write_text(target.read_text().replace(
        "app.kubernetes.io/part-of:", "team: reviewed\n    app.kubernetes.io/part-of:", 1))
    gone = reviewer / dropped["git_path"]
    gone.unlink()
    listing = gone.parent / "kustomization.yaml"
    listing.write_text(listing.read_text().replace(f"  - {gone.name}\n", ""))
    if "  - " not in listing.read_text():     # the namespace directory is empty now
        listing.unlink()
        parent = listing.parent.parent / "kustomization.yaml"
        parent.write_text(parent.read_text().replace(f"  - {listing.parent.name}\n", ""))
    git("add", "-A", cwd=reviewer)
    git("commit", "-qm", "Drop one secret, label another", cwd=reviewer)
    git("push", "-q", "origin", "main", cwd=reviewer)
    head = git("rev-parse", "HEAD", cwd=reviewer).strip()

    async def applied() -> bool:
        ks = await client.get_json(KUSTOMIZATION)
        return bool(ks["status"].get("lastAppliedRevision") == f"main@sha1:{head}")

    await eventually(applied, within=30)
    obj = await client.get_json(controller.sealed_secret_path(kept["namespace"], kept["name"]))
    assert obj["metadata"]["labels"]["team"] == "reviewed"
    listed = await client.get_json(
        f"/apis/bitnami.com/v1alpha1/namespaces/{dropped['namespace']}/sealedsecrets")
    assert dropped["name"] not in {o["metadata"]["name"] for o in listed["items"]}
    ks = await client.get_json(KUSTOMIZATION)
    ids = {e["id"] for e in ks["status"]["inventory"]["entries"]}
    assert f"{kept['namespace']}_{kept['name']}_bitnami.com_SealedSecret" in ids
    assert f"{dropped['namespace']}_{dropped['name']}_bitnami.com_SealedSecret" not in ids


async def test_a_broken_revision_is_not_applied_and_says_why(
        sandbox: Sandbox, client: KubeClient, tmp_path: Path) -> None:
    assert sandbox.gitops is not None
    applied_before = (await client.get_json(KUSTOMIZATION))["status"]["lastAppliedRevision"]
    reviewer = tmp_path / "reviewer"
    git("clone", "-q", str(sandbox.gitops.remote), str(reviewer), cwd=tmp_path)
    (reviewer / "clusters/sandbox-1/kustomization.yaml").write_text(
        "resources:\n  - missing-dir\n")
    git("commit", "-qam", "broken", cwd=reviewer)
    git("push", "-q", "origin", "main", cwd=reviewer)
    head = git("rev-parse", "HEAD", cwd=reviewer).strip()

    async def attempted() -> dict[str, Any] | None:
        status: dict[str, Any] = (await client.get_json(KUSTOMIZATION))["status"]
        return status if status.get("lastAttemptedRevision") == f"main@sha1:{head}" else None

    status = await eventually(attempted, within=30)
    assert status["lastAppliedRevision"] == applied_before
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "BuildFailed")
    assert "missing-dir" in ready["message"]
