"""The controller's Prometheus metrics, with the real names and labels (sealed-secrets.md §5).

One :class:`ControllerMetrics` per emulated cluster, each with its own
``CollectorRegistry``, so twenty clusters in one process never mix their counters.
Counters live as long as the cluster (a restarted Pod would reset them upstream; the
emulation resets them too, see :meth:`ControllerMetrics.reset`).  The per-SealedSecret
``condition_info`` gauge is computed at scrape time from the stored status, which is what
the real controller's gauge mirrors, without holding 5,000 gauge children per cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sealfleet.sandbox.objects import ObjectStore

PREFIX = "sealed_secrets_controller"
INSTANCE_LABEL = "app.kubernetes.io/instance"
_CONDITION_VALUES = {"True": 1.0, "False": -1.0}


class _ConditionCollector(Collector):
    """``sealed_secrets_controller_condition_info``: -1 False, 0 Unknown, 1 True."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        """The family without samples: what registering needs (without it, the registry
        would collect, parsing every SealedSecret each time a controller starts)."""
        yield self._family()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_condition_info",
            "Current SealedSecret condition status. Values are -1 (false), 0 (unknown or "
            "absent), 1 (true)",
            labels=["namespace", "name", "condition", "ss_app_kubernetes_io_instance"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for entry in self._store.entries("sealedsecrets.bitnami.com", None):
            obj = entry.obj()
            conditions = (obj.get("status") or {}).get("conditions") or []
            instance = entry.labels.get(INSTANCE_LABEL, "")
            for condition in conditions:
                family.add_metric(
                    [entry.namespace, entry.name, str(condition.get("type", "")), instance],
                    _CONDITION_VALUES.get(str(condition.get("status")), 0.0),
                )
        yield family


class ControllerMetrics:
    """The metric families one controller exports on ``:8081/metrics``."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.registry = CollectorRegistry(auto_describe=True)
        self._build()

    def _build(self) -> None:
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Build information.", ["revision"], registry=self.registry
        )
        self.build_info.labels(revision="0.36.6").set(1)
        self.unseal_requests = Counter(
            f"{PREFIX}_unseal_requests_total",
            "Total number of sealed secret unseal requests",
            registry=self.registry,
        )
        self.unseal_errors = Counter(
            f"{PREFIX}_unseal_errors_total",
            "Total number of sealed secret unseal errors by reason",
            ["reason", "namespace"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests_total",
            "Total number of HTTP requests by status code.",
            ["path", "code", "method"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "A histogram of latencies for requests.",
            ["path", "method"],
            registry=self.registry,
        )
        self.registry.register(_ConditionCollector(self._store))

    def reset(self) -> None:
        """A new controller process starts with fresh counters."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._build()

    def observe_http(self, path: str, method: str, code: int, seconds: float) -> None:
        # promhttp lower-cases the method and renders the code as a string.
        self.http_requests.labels(path=path, code=str(code), method=method.lower()).inc()
        self.http_duration.labels(path=path, method=method.lower()).observe(seconds)

    def exposition(self) -> bytes:
        # The Go client exports no ``*_created`` series; drop prometheus_client's.
        lines = generate_latest(self.registry).split(b"\n")
        return b"\n".join(line for line in lines if not _is_created_series(line))


def _is_created_series(line: bytes) -> bool:
    if line.startswith(b"# "):
        parts = line.split(b" ", 3)
        return len(parts) > 2 and parts[2].endswith(b"_created")
    return line.split(b"{", 1)[0].split(b" ", 1)[0].endswith(b"_created")
