"""An emulated Bitnami sealed-secrets controller, one per sandbox cluster.

It reads and writes the cluster's :class:`~sealfleet.sandbox.objects.ObjectStore`
directly (as the real one talks to its apiserver), and answers the service proxy for its
two Services.  Modules: ``flags`` (its command line), ``keyring`` (keys, ordering,
renewal), ``unsealing`` (SealedSecret -> Secret, status, events), ``http_api`` (cert.pem,
verify, rotate, metrics), ``process`` (one run of the binary), ``kubelet`` (one Pod:
start-up delay, readiness, crash loops, termination), ``deployment`` and ``rollout`` (the
deployment controller and its arithmetic), ``workload`` (the loop, the ReplicaSet
controller, the Service's endpoints), ``manifests`` (the installed objects).
"""

from sealfleet.sandbox.controller.flags import ControllerFlags
from sealfleet.sandbox.controller.workload import ControllerWorkload

__all__ = ["ControllerFlags", "ControllerWorkload"]
