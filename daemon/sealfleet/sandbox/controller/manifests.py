"""The objects a sealed-secrets install puts into a cluster, as the static manifest does.

``controller.yaml`` of the release: the CRD ``sealedsecrets.bitnami.com`` (status
subresource, printer columns), the Deployment ``sealed-secrets-controller`` in
``kube-system``, its Service on port 8080 (unnamed, so kubeseal's proxy name ends in a
colon) and the metrics Service on 8081.  Pods are made from the Deployment's template
the way a ReplicaSet would (simplified: there are no ReplicaSet objects, so the Pod is
owned by the Deployment directly; its name and ``pod-template-hash`` label are a
ReplicaSet's).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

from sealfleet.sandbox.controller.flags import CONTAINER_NAME, IMAGE, ControllerFlags

APP_LABEL = "name"
POD_TEMPLATE_HASH = "pod-template-hash"
NODE_NAME = "sandbox-node"
DEFAULT_PROGRESS_DEADLINE = 600  # the apiserver's default for progressDeadlineSeconds
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
}


def crd() -> dict[str, Any]:
    """The SealedSecret CRD as the release installs it.

    The one definition: the emulated apiserver installs it on construction (so the type
    is served before any controller runs) and derives its OpenAPI schema from it.
    """
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "sealedsecrets.bitnami.com",
            "annotations": {"controller-gen.kubebuilder.io/version": "v0.16.3"},
        },
        "spec": {
            "group": "bitnami.com",
            "names": {
                "kind": "SealedSecret",
                "listKind": "SealedSecretList",
                "plural": "sealedsecrets",
                "singular": "sealedsecret",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "jsonPath": ".status.conditions[0].message",
                            "name": "Status",
                            "type": "string",
                        },
                        {
                            "jsonPath": ".status.conditions[0].status",
                            "name": "Synced",
                            "type": "string",
                        },
                        {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "SealedSecret is the K8s representation of a "
                            '"sealed Secret" - a regular k8s Secret that has been '
                            "sealed (encrypted) using the controller's key.",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    "type": "object",
                                    "required": ["encryptedData"],
                                    "properties": {
                                        "data": {"format": "byte", "type": "string"},
                                        "encryptedData": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                        "template": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                    },
                                },
                                "status": _STATUS_SCHEMA,
                            },
                        }
                    },
                }
            ],
        },
    }


def deployment(name: str, namespace: str, flags: ControllerFlags, *,
               progress_deadline_seconds: int = DEFAULT_PROGRESS_DEADLINE) -> dict[str, Any]:
    """The Deployment with the fields the apiserver defaults spelled out (so the
    emulated deployment controller reads them where the real one does)."""
    labels = {APP_LABEL: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {}},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": progress_deadline_seconds,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": CONTAINER_NAME,
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["controller"],
                            "args": flags.to_args(),
                            "ports": [
                                {"containerPort": 8080, "name": "http"},
                                {"containerPort": 8081, "name": "metrics"},
                            ],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "runAsUser": 1001,
                            },
                            "volumeMounts": [{"mountPath": "/tmp", "name": "tmp"}],  # noqa: S108 - in the Pod
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {APP_LABEL: name}},
        "spec": {
            "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}],
            "selector": {APP_LABEL: name},
            "type": "ClusterIP",
            "clusterIP": "10.96.0.80",
        },
    }


def metrics_service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{name}-metrics",
            "namespace": namespace,
            "labels": {APP_LABEL: name},
        },
        "spec": {
            "ports": [{"port": 8081, "targetPort": 8081, "protocol": "TCP"}],
            "selector": {APP_LABEL: name},
            "type": "ClusterIP",
            "clusterIP": "10.96.0.81",
        },
    }


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable pod-template-hash in the apimachinery alphabet (10 characters).

    Empty maps and lists count as absent, as ``omitempty`` (and the controller's
    semantic equality) have it: removing the last template annotation gives the
    template without annotations, and so the ReplicaSet made for that one.
    """
    digest = hashlib.sha256(json.dumps(_omit_empty(template), sort_keys=True).encode()).digest()
    return "".join(GENERATE_ALPHABET[b % len(GENERATE_ALPHABET)] for b in digest[:10])


def pod(deploy: Mapping[str, Any], template: Mapping[str, Any], pod_hash: str,
        rng: random.Random) -> dict[str, Any]:
    """A Pod of the ReplicaSet ``<deployment>-<pod_hash>``, made from that ReplicaSet's
    template (which may be older than the Deployment's current one)."""
    meta = deploy["metadata"]
    suffix = "".join(rng.choices(GENERATE_ALPHABET, k=5))
    labels = {**(template.get("metadata") or {}).get("labels", {}), POD_TEMPLATE_HASH: pod_hash}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    metadata: dict[str, Any] = {
        "name": f"{meta['name']}-{pod_hash}-{suffix}",
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec = json.loads(json.dumps(template.get("spec") or {}))
    spec["nodeName"] = NODE_NAME
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


def _omit_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        kept = {k: _omit_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_omit_empty(v) for v in value]
    return value
