"""An emulated Flux (source-controller and kustomize-controller) for sandbox clusters.

``FluxController`` runs beside the emulated sealed-secrets controller of a cluster whose
objects come from the sandbox's GitOps repository (:mod:`sealfleet.sandbox.gitops`): it
fetches the remote's ``main``, builds ``clusters/<cluster>`` and applies it with drift
correction, so an in-cluster edit of a Flux-managed SealedSecret is put back at the next
interval and a merged reseal branch reaches the cluster, as with the real Flux.
"""

from __future__ import annotations

from sealfleet.sandbox.flux.controller import (
    GIT_REPOSITORIES,
    KUSTOMIZATIONS,
    FluxController,
    go_duration,
)

__all__ = ["GIT_REPOSITORIES", "KUSTOMIZATIONS", "FluxController", "go_duration"]
