"""The daemon's HTTP API: read endpoints, metrics, status page (aiohttp).

``app`` builds the application, ``server`` runs it on a unix socket and/or TCP, on the
thread ``http_thread`` owns, ``protocol`` puts aiohttp's own HTTP-layer errors in the API's
JSON shape, ``snapshot`` holds the cached, pre-serialised inventory view, ``metrics`` the
Prometheus collector, ``openapi`` the API description and ``client`` the CLI's client.
"""

from sealfleet.adapters.http_api.app import ApiDeps, build_app
from sealfleet.adapters.http_api.server import ApiServer
from sealfleet.adapters.http_api.snapshot import InventoryView

__all__ = ["ApiDeps", "ApiServer", "InventoryView", "build_app"]
