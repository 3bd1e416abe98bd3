"""The resource types an emulated cluster stores, with the storage facts about each."""

from __future__ import annotations

import dataclasses

from sealfleet.sandbox.objects.errors import ApiError


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """What storage needs to know about a resource (discovery adds verbs and short names)."""

    plural: str
    kind: str
    group: str  # "" for core
    version: str
    namespaced: bool
    generation: str  # "none" | "spec" | "custom" (all but metadata/status) | "spec+annotations"
    has_status: bool  # status subresource

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How messages name the resource: ``secrets``, ``sealedsecrets.bitnami.com``."""
        return self.key


RESOURCE_TYPES: dict[str, ResourceType] = {
    rt.key: rt
    for rt in (
        ResourceType("namespaces", "Namespace", "", "v1", False, "none", True),
        ResourceType("secrets", "Secret", "", "v1", True, "none", False),
        ResourceType("services", "Service", "", "v1", True, "none", True),
        ResourceType("pods", "Pod", "", "v1", True, "spec", True),
        ResourceType("events", "Event", "", "v1", True, "none", False),
        ResourceType("deployments", "Deployment", "apps", "v1", True, "spec+annotations", True),
        ResourceType("leases", "Lease", "coordination.k8s.io", "v1", True, "none", False),
        ResourceType(
            "customresourcedefinitions",
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            "v1",
            False,
            "spec",
            True,
        ),
        ResourceType(
            "sealedsecrets", "SealedSecret", "bitnami.com", "v1alpha1", True, "custom", True
        ),
        # Flux's, for the sandbox's emulated source- and kustomize-controller (sandbox/flux).
        ResourceType(
            "gitrepositories", "GitRepository", "source.toolkit.fluxcd.io", "v1", True,
            "custom", True,
        ),
        ResourceType(
            "kustomizations", "Kustomization", "kustomize.toolkit.fluxcd.io", "v1", True,
            "custom", True,
        ),
    )
}


def resource_type(resource: str) -> ResourceType:
    try:
        return RESOURCE_TYPES[resource]
    except KeyError:
        raise ApiError(
            404, "NotFound", f"the server could not find the requested resource ({resource})"
        ) from None
