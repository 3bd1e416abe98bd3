"""What the daemon knows of a cluster's sealed-secrets controller, as one value.

The probe decides it from facts (the Deployment's ready replicas, whether its Service
exists, whether ``/v1/cert.pem`` answered), so the report, the metrics and the status
page read a state instead of matching the wording of an error message.
"""

from __future__ import annotations

import enum


class ControllerState(enum.StrEnum):
    SERVING = "serving"                      # /v1/cert.pem answered through the Service
    NO_READY_REPLICAS = "no_ready_replicas"  # the Deployment has no ready replica
    NOT_INSTALLED = "not_installed"          # no such Deployment or Service
    NOT_SERVING = "not_serving"              # replicas ready, yet /v1/cert.pem did not answer


def is_down(state: ControllerState | str | None) -> bool:
    """No running controller Pod: every Pod crash-loops, starts, or is gone (the alert's
    "crash-looping"; a Deployment reports no ready replica in all of these)."""
    return state == ControllerState.NO_READY_REPLICAS


def is_problem(state: ControllerState | str | None) -> bool:
    """The controller cannot be asked for its certificate (None: never probed)."""
    return state is not None and state != ControllerState.SERVING
