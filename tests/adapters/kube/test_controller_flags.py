"""The controller's key flags read from its Deployment over HTTPS, as the controller reads them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import NotFound
from sealfleet.domain.planning.controller_flags import ControllerFlags, KeyOrder
from sealfleet.errors import PermanentError

NS, NAME = "kube-system", "sealed-secrets-controller"


def install(cluster: Any, *containers: dict[str, Any], name: str = NAME) -> None:
    cluster.store.create("deployments.apps", NS, {"metadata": {"name": name}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"name": name}},
        "template": {"metadata": {"labels": {"name": name}},
                     "spec": {"containers": list(containers)}}}})


def container(name: str = "sealed-secrets-controller", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "docker.io/bitnami/sealed-secrets-controller:0.36.6",
            **fields}


async def test_static_manifest_command_and_args_with_env_behind_them(cluster: Any) -> None:
    install(cluster, container(
        command=["controller", "--key-renew-period=0"],
        args=["--watch-for-secrets", "--key-order-priority", "SecretCreationTimestamp"],
        env=[{"name": "SEALED_SECRETS_KEY_RENEW_PERIOD", "value": "1h"},
             {"name": "SEALED_SECRETS_KEY_PREFIX", "value": "fleet-keys"}]))
    async with cluster.client() as client:
        flags = await controller.read_controller_flags(client, NS, NAME)
    assert flags == ControllerFlags(key_renew_period=dt.timedelta(0), watch_for_secrets=True,
                                    key_prefix="fleet-keys", key_order=KeyOrder.SECRET_CREATION)


async def test_the_helm_container_is_found_among_sidecars_and_args_expand_env(
        cluster: Any) -> None:
    install(cluster, container("metrics-proxy", args=["--watch-for-secrets"]),
            container("controller", command=["controller"],
                      args=["--key-prefix", "$(PREFIX)", "--key-renew-period=$(PERIOD)",
                            "--my-cn=$$(PREFIX)"],
                      env=[{"name": "PREFIX", "value": "helm-keys"},
                           {"name": "PERIOD", "value": "168h"}]))
    async with cluster.client() as client:
        flags = await controller.read_controller_flags(client, NS, NAME)
    assert flags.key_prefix == "helm-keys"
    assert flags.key_renew_period == dt.timedelta(hours=168)
    assert not flags.watch_for_secrets  # that was the sidecar's


async def test_settings_the_deployment_does_not_spell_out_are_named(cluster: Any) -> None:
    install(cluster, container(
        env=[{"name": "SEALED_SECRETS_KEY_RENEW_PERIOD", "value": "1h"},
             {"name": "SEALED_SECRETS_KEY_RENEW_PERIOD",
              "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "period"}}},
             {"name": "OTHER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        envFrom=[{"configMapRef": {"name": "controller-env"}}]))
    async with cluster.client() as client:
        flags = await controller.read_controller_flags(client, NS, NAME)
    # The later valueFrom entry replaces the literal one: its value is unknown here.
    assert flags.key_renew_period == dt.timedelta(hours=720)
    assert flags.unresolved == ("SEALED_SECRETS_KEY_RENEW_PERIOD",
                                "envFrom configMapRef controller-env")


async def test_a_value_the_controller_refuses_is_permanent_and_names_deployment_and_flag(
        cluster: Any) -> None:
    install(cluster, container(args=["--key-renew-period=30d"]))
    async with cluster.client() as client:
        with pytest.raises(PermanentError, match=rf"{NS}/{NAME}: .*--key-renew-period"):
            await controller.read_controller_flags(client, NS, NAME)
        with pytest.raises(NotFound):
            await controller.read_controller_flags(client, NS, "absent")
