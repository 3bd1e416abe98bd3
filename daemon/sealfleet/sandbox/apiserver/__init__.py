"""An emulated kube-apiserver over a sandbox ObjectStore (see ``server.ApiServer``)."""

from sealfleet.sandbox.apiserver.auth import Tokens
from sealfleet.sandbox.apiserver.context import ServiceHandler
from sealfleet.sandbox.apiserver.faults import Faults
from sealfleet.sandbox.apiserver.server import ApiServer

__all__ = ["ApiServer", "Faults", "ServiceHandler", "Tokens"]
