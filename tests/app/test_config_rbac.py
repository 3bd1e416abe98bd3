"""The shipped RBAC manifests: what each mode may and may not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

CONFIG = Path(__file__).resolve().parents[2] / "config"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in YAML(typ="safe").load_all((CONFIG / name).read_text()) if d]


def rules(name: str) -> list[tuple[str, str, str, set[str], str | None]]:
    """(role kind, namespace, resource, verbs, group) for every rule."""
    out = []
    for doc in documents(name):
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.append((doc["kind"], doc["metadata"].get("namespace", "*"),
                                    resource, set(rule["verbs"]), group))
    return out


def test_full_mode_reads_key_secrets_only_in_kube_system() -> None:
    granted = rules("rbac-full.yaml")
    secrets = [r for r in granted if r[2] == "secrets"]
    assert secrets == [("Role", "kube-system", "secrets", {"get", "list", "watch"}, "")]
    assert ("ClusterRole", "*", "sealedsecrets", {"get", "list", "watch"},
            "bitnami.com") in granted
    proxy = [r for r in granted if r[2] == "services/proxy"]
    assert proxy
    assert proxy[0][3] == {"get", "create"}
    assert any(r[2] == "deployments" and r[4] == "apps" for r in granted)


def test_least_privilege_mode_has_no_secret_access() -> None:
    granted = rules("rbac-least-privilege.yaml")
    assert not [r for r in granted if r[2] in ("secrets", "*")]
    assert any(r[2] == "sealedsecrets" for r in granted)
    assert any(r[2] == "services/proxy" for r in granted)


def test_every_binding_points_at_a_defined_role_and_the_service_account() -> None:
    for name in ("rbac-full.yaml", "rbac-least-privilege.yaml"):
        docs = documents(name)
        roles = {(d["kind"], d["metadata"]["name"]) for d in docs
                 if d["kind"] in ("Role", "ClusterRole")}
        bindings = [d for d in docs if d["kind"].endswith("Binding")]
        assert len(bindings) == 2
        for binding in bindings:
            assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sealfleet",
                                            "namespace": "sealfleet"}]
