"""Fleet benchmark: ``sealfleet run`` against 10 to 1,000 emulated clusters.

For each fleet size N (``--clusters 10,100,1000``; default the quick ``10,100``), a
sandbox of N clusters x 20 SealedSecrets (2 keys each, 2048 bits; also 4096 bits at
``--rsa4096-at``) runs in one process (``sealfleet sandbox``), the real daemon in
another (``sealfleet run`` on the sandbox's config, systemd's notify socket and watchdog
emulated here), and this process measures.  Every figure is printed beside a baseline
measured in the same run:

1. the first full pass (from the daemon's "scanning clusters" to READY=1), wall and
   CPU time, against the RSA floor of the items (CPU: their count x the CPU cost of one
   decrypt, sampled throughout the run: ``rsa_floor``; wall: that many decrypts run on
   every core just before the daemon starts, so that the machine's other load at the
   time counts in the floor too, and beside it the ideal of the CPU floor spread over
   idle cores) plus a plain aiohttp client doing, with the daemon's concurrency
   (``[fleet] connect_concurrency``), one TLS connect, one paginated list and a JSON
   parse per cluster; and the time per cluster at each N.  Beside them, where the wall
   time goes: the daemon's RSA decrypts per item (``sealfleet_rsa_decrypts_total``; the
   floor counts one), how much of the time its RSA workers held a job they ran
   (``sealfleet_rsa_cpu_seconds_total`` over ``sealfleet_rsa_busy_seconds_total``; the
   rest they waited for a core, or on threads for the GIL, see ``bench/gil.py``), and
   the sandbox's CPU, requests and TLS connections while it serves the plain client and
   while it serves the pass (the two share these cores, so daemon + sandbox CPU over the
   cores is a floor for the pass's wall time here).  The daemon's CPU counts its RSA
   worker processes';
2. the daemon's RSS per cluster (its RSA workers' proportional set size added: they share
   the interpreter's and OpenSSL's pages with it): after the pass settles, minus its RSS
   when the fleet started, over N (and between fleet sizes, the slope); and that figure
   split into its objects' share and the rest beyond them (the issue's target: under 300
   KB), measured in the same run: a second sandbox of the same N clusters with no
   SealedSecrets (same keys, namespaces and controllers) and a second daemon against it
   give the RSS per cluster of a fleet without objects, which is what a cluster costs
   beyond them; the difference is the objects' share. Beside it, the marginal cost of one
   more object in the settled daemon: ``OBJECTS_ADDED`` more SealedSecrets are created in
   every cluster (through the apiserver, as kubeseal's user would; copies under new names
   of the cluster's own namespace- and cluster-wide ones, valid where they are because
   their encryption label does not name the object), the daemon takes them in from its
   watches, and once the report counts them and RSS settles again, the RSS they added over
   their number. That one is lower than an object's share of the first pass: new objects
   fill the holes the first pass's garbage left in the heap (and the copies' items are
   attributed from the daemon's cache), so it is printed, not subtracted;
3. ``GET /api/v1/staleness`` latency over the API socket, p50/p99, during the first pass
   and after it, and beside it the same figures of a plain aiohttp server in a process of
   its own answering a body of the same size, probed alike at the same time (what this
   machine, busy with the pass, allows any server); the longest gap between watchdog
   pings; how many clusters the report showed scanned over time (each cluster's result
   is visible once it is done);
4. at ``--outage-at`` (default the largest N): every cluster's apiserver down at once
   (listeners closed, connections dropped) for ``--outage-seconds``, then back: the time
   until the report shows every cluster reachable again, the peak number of TLS
   handshakes in flight at the sandbox's listeners (the daemon's connect gate bounds it),
   and how many SealedSecret lists the recovery made (resumed watches: none);
5. then a daemon restart: time to READY and lists made (stored resourceVersions: none).

Usage: ``python bench/fleet.py [--clusters 10,100,1000]`` (the 1,000-cluster run takes
several minutes, most of them the sandbox's RSA key generation).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from rsa_floor import FloorRun, RsaSampler
from sealfleet.app import config
from sealfleet.sandbox import SandboxProcess

SEALED_SECRETS = 20
KEYS = 2
LIST_PATH = "/apis/bitnami.com/v1alpha1/sealedsecrets"
PROBE_INTERVAL = 0.1        # seconds between /api/v1/staleness requests
SETTLE_SECONDS = 15.0       # after READY: idle connections close, RSS settles
OBJECTS_ADDED = 20          # SealedSecrets added per cluster to measure one object's RSS
REPORT_BYTES_PER_CLUSTER = 1000   # about what /api/v1/staleness answers per cluster
WATCHDOG_USEC = 60_000_000  # WatchdogSec=60, as the shipped unit


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """The live child processes of *pid* (the daemon's RSA workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def family_cpu(pid: int) -> float:
    """CPU seconds of *pid*, its live children and the children it has reaped: the
    daemon and its RSA worker processes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    live = 0.0
    for child in children(pid):
        try:
            live += proc_cpu(child)
        except OSError:   # it ended between the listing and the read
            continue
    return proc_cpu(pid) + reaped + live


def workers_pss_mb(pid: int) -> tuple[int, float]:
    """How many RSA workers the daemon runs and their proportional set size (MB): the
    pages they share with the daemon (the interpreter, OpenSSL) counted by share."""
    total, count = 0.0, 0
    for child in children(pid):
        try:
            lines = Path(f"/proc/{child}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        count += 1
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:")) / 1024
    return count, total


def daemon_memory_mb(pid: int) -> float:
    """The daemon's RSS plus its RSA workers' PSS."""
    return proc_rss_mb(pid) + workers_pss_mb(pid)[1]


@dataclass(frozen=True)
class SandboxReading:
    """The sandbox's CPU time and what its apiservers served (requests by kind, TLS
    connections accepted), read together."""
    cpu: float
    served: dict[str, int]

    def since(self, before: SandboxReading) -> tuple[float, str]:
        """What the phase between *before* and this reading cost the sandbox: CPU-s, and
        what it served, as text."""
        made = {kind: count - before.served.get(kind, 0)
                for kind, count in sorted(self.served.items())}
        return self.cpu - before.cpu, ", ".join(
            f"{kind} {count}" for kind, count in made.items() if count) or "nothing"


@dataclass(frozen=True)
class SandboxMeter:
    pid: int
    control: Any

    async def read(self) -> SandboxReading:
        served = dict(await asyncio.to_thread(self.control.requests))
        connections = await asyncio.to_thread(self.control.connections)
        served["TLS connections accepted"] = connections["accepted"]
        return SandboxReading(proc_cpu(self.pid), served)


# --------------------------------------------------------------------- baseline


Targets = tuple[dict[str, Any], dict[str, Any], list[dict[str, str]], ssl.SSLContext]


def targets(kubeconfig: dict[str, Any]) -> Targets:
    """The sandbox kubeconfig's clusters, users and full-access contexts by name, and
    one TLS context for its CA (every sandbox cluster shares it)."""
    clusters = {c["name"]: c["cluster"] for c in kubeconfig["clusters"]}
    users = {u["name"]: u["user"] for u in kubeconfig["users"]}
    contexts = [c["context"] for c in kubeconfig["contexts"]
                if not c["name"].endswith("-restricted")]
    ca = base64.b64decode(clusters[contexts[0]["cluster"]]["certificate-authority-data"])
    return clusters, users, contexts, ssl.create_default_context(cadata=ca.decode())


async def plain_client(kubeconfig: dict[str, Any], concurrency: int) -> tuple[float, int]:
    """Per cluster: one TLS connect, a paginated list, a JSON parse (wall s, objects)."""
    clusters, users, contexts, context = targets(kubeconfig)
    gate = asyncio.Semaphore(concurrency)

    async def one(ctx: dict[str, str]) -> int:
        server = clusters[ctx["cluster"]]["server"]
        headers = {"Authorization": f"Bearer {users[ctx['user']]['token']}"}
        count = 0
        async with gate, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context)) as session:
            token = ""
            while True:
                params = {"limit": "500", **({"continue": token} if token else {})}
                async with session.get(server + LIST_PATH, params=params,
                                       headers=headers) as response:
                    page = json.loads(await response.read())
                count += len(page["items"])
                token = page["metadata"].get("continue") or ""
                if not token:
                    return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(c) for c in contexts))
    return time.perf_counter() - started, sum(counts)


async def add_objects(kubeconfig: dict[str, Any], per_cluster: int,
                      concurrency: int) -> int:
    """Create *per_cluster* SealedSecrets in every cluster, copies (new names, same
    namespace) of its namespace- and cluster-wide ones; how many were created."""
    clusters, users, contexts, context = targets(kubeconfig)
    gate = asyncio.Semaphore(concurrency)
    wide = {"sealedsecrets.bitnami.com/namespace-wide", "sealedsecrets.bitnami.com/cluster-wide"}

    async def one(ctx: dict[str, str]) -> int:
        server = clusters[ctx["cluster"]]["server"]
        headers = {"Authorization": f"Bearer {users[ctx['user']]['token']}"}
        async with gate, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(server + LIST_PATH, headers=headers) as response:
                items = json.loads(await response.read())["items"]
            sources = [o for o in items
                       if wide & {k for k, v in (o["metadata"].get("annotations") or {}).items()
                                  if v == "true"}]
            created = 0
            for index in range(per_cluster if sources else 0):
                source = sources[index % len(sources)]
                metadata = source["metadata"]
                body = {"apiVersion": source["apiVersion"], "kind": source["kind"],
                        "metadata": {"name": f"{metadata['name']}-copy-{index}",
                                     "namespace": metadata["namespace"],
                                     "annotations": metadata.get("annotations") or {},
                                     "labels": metadata.get("labels") or {}},
                        "spec": source["spec"]}
                path = (f"/apis/bitnami.com/v1alpha1/namespaces/{metadata['namespace']}"
                        "/sealedsecrets")
                async with session.post(server + path, json=body, headers=headers) as response:
                    await response.read()
                    created += response.status == 201
            return created

    return sum(await asyncio.gather(*(one(c) for c in contexts)))


# --------------------------------------------------------------------- the daemon


class Notifications(asyncio.DatagramProtocol):
    """systemd's side of sd_notify: every message the daemon sends, with its arrival."""

    def __init__(self, on_message: Callable[[str], None]) -> None:
        self.messages: list[tuple[float, str]] = []
        self._on_message = on_message

    def datagram_received(self, data: bytes, addr: Any) -> None:
        text = data.decode(errors="replace")
        self.messages.append((time.perf_counter(), text))
        self._on_message(text)

    def watchdog_gaps(self, start: float, end: float) -> list[float]:
        pings = [start] + [t for t, m in self.messages
                           if "WATCHDOG=1" in m.splitlines() and start <= t <= end] + [end]
        return [b - a for a, b in itertools.pairwise(pings)]


@dataclass
class DaemonRun:
    """One ``sealfleet run``: when it started scanning and was ready, CPU and RSS then."""

    process: subprocess.Popen[bytes]
    notifications: Notifications
    scanning_at: float = 0.0
    ready_at: float = 0.0
    cpu_scanning: float = 0.0
    cpu_ready: float = 0.0
    rss_scanning: float = 0.0
    scanning: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def start_daemon(state: Path, notify_path: Path, log: Any) -> tuple[DaemonRun, Any]:
    run: DaemonRun | None = None

    def on_message(text: str) -> None:
        assert run is not None
        lines = text.splitlines()
        if "STATUS=scanning clusters" in lines and not run.scanning.is_set():
            run.scanning_at, run.cpu_scanning = time.perf_counter(), family_cpu(run.process.pid)
            run.rss_scanning = daemon_memory_mb(run.process.pid)
            run.scanning.set()
        if "READY=1" in lines and not run.ready.is_set():
            run.ready_at, run.cpu_ready = time.perf_counter(), family_cpu(run.process.pid)
            run.ready.set()

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    transport, notifications = await loop.create_datagram_endpoint(
        lambda: Notifications(on_message), sock=sock)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    process = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "sealfleet", "run", "-c",
                           str(state / "sealfleet.toml")], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    run = DaemonRun(process, notifications)
    return run, transport


def stop_daemon(run: DaemonRun) -> None:
    if run.process.poll() is None:
        run.process.send_signal(signal.SIGTERM)
        try:
            run.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()


# The latency baseline: aiohttp with nothing else to do, in a process of its own, on the
# same machine at the same time, answering a body of the report's size.
PLAIN_SERVER = """
import sys
from aiohttp import web
body = b"x" * int(sys.argv[2])
async def staleness(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/api/v1/staleness", staleness)
web.run_app(app, path=sys.argv[1], print=None, access_log=None)
"""


@contextlib.contextmanager
def plain_server(socket_path: Path, size: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", PLAIN_SERVER, str(socket_path),
                                str(size)])
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


class Prober:
    """GET /api/v1/staleness over the API socket, every PROBE_INTERVAL: latencies, and
    now and then the report's count of scanned and reachable clusters."""

    def __init__(self, socket_path: Path) -> None:
        self._socket = socket_path
        self.latencies: list[tuple[float, float]] = []      # (when, seconds)
        self.reports: list[tuple[float, int, int]] = []     # (when, scanned, reachable)
        self._task: asyncio.Task[None] | None = None
        self.parse_every = 10
        self.last_size = 0

    async def __aenter__(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        connector = aiohttp.UnixConnector(path=str(self._socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            count = 0
            while True:
                started = time.perf_counter()
                try:
                    async with session.get("http://daemon/api/v1/staleness") as response:
                        body = await response.read()
                        status = response.status
                except aiohttp.ClientError:
                    await asyncio.sleep(PROBE_INTERVAL)  # not listening yet
                    continue
                finished = time.perf_counter()
                if status == 200:
                    self.latencies.append((started, finished - started))
                    self.last_size = len(body)
                    count += 1
                    if count % self.parse_every == 0:
                        self._note(finished, body)
                await asyncio.sleep(max(0.0, PROBE_INTERVAL - (finished - started)))

    def _note(self, when: float, body: bytes) -> None:
        report = json.loads(body)
        clusters = report.get("clusters") or []
        scanned = sum(1 for c in clusters if c.get("last_scan_at"))
        self.reports.append((when, scanned, int(report["fleet"]["reachable"])))

    async def _fetch(self, path: str) -> bytes:
        """*path*'s body from a fresh request (a connection of its own)."""
        connector = aiohttp.UnixConnector(path=str(self._socket))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get("http://daemon" + path) as response:
            return await response.read()

    async def sealed_secrets_now(self) -> int:
        """The report's count of SealedSecrets, fleet-wide, from a fresh request."""
        report = json.loads(await self._fetch("/api/v1/staleness"))
        return int(report["fleet"]["sealed_secrets"]["total"])

    async def report_now(self) -> tuple[int, int, int]:
        """(clusters, scanned, reachable) from a fresh request."""
        report = json.loads(await self._fetch("/api/v1/staleness"))
        clusters = report.get("clusters") or []
        return (len(clusters), sum(1 for c in clusters if c.get("last_scan_at")),
                int(report["fleet"]["reachable"]))

    async def counters_now(self) -> dict[str, float]:
        """The daemon's counters (``sealfleet_*_total``), freshly scraped: its RSA
        decrypts and its RSA threads' CPU and busy seconds, its store writes and the
        transactions they took."""
        text = (await self._fetch("/metrics")).decode()
        return {name: float(value) for name, _, value in
                (line.partition(" ") for line in text.splitlines())
                if name.startswith("sealfleet_") and name.endswith("_total")}

    def between(self, start: float, end: float) -> list[float]:
        return [latency for when, latency in self.latencies if start <= when <= end]


async def wait_for(check: Callable[[], Any], *, every: float = 0.5,
                   within: float = 1800.0) -> float:
    """Poll the async *check* until true; returns when it became true."""
    deadline = time.perf_counter() + within
    while True:
        if await check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(every)


# --------------------------------------------------------------------- one fleet size


@dataclass
class Result:
    clusters: int
    bits: int
    items: int
    wall: float
    cpu: float
    base_wall: float
    base_cpu: float
    rss_per_cluster_kb: float
    rss_after_mb: float
    rss_before_mb: float
    ideal_wall: float
    load: float          # 1-minute load average at the end of the run
    object_kb: float = float("nan")    # RSS of one more SealedSecret, settled daemon
    empty_kb: float = float("nan")     # RSS per cluster of the same fleet without objects


def latency_line(name: str, values: list[float]) -> str:
    return (f"{name}: p50 {percentile(values, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms, max "
            f"{max(values, default=float('nan')) * 1000:.1f} ms ({len(values)} requests)")


async def measure(clusters: int, bits: int, state: Path, *, concurrency: int, outage: bool,
                  outage_seconds: float) -> Result:
    cores = os.cpu_count() or 1
    sandbox_args = ["--clusters", str(clusters), "--sealed-secrets", str(SEALED_SECRETS),
                    "--keys", str(KEYS), "--key-bits", str(bits), "--namespaces", "10",
                    "--seed", "1", "--controller-startup-delay", "0"]
    print(f"\n=== {clusters} clusters x {SEALED_SECRETS} SealedSecrets, {KEYS} keys of "
          f"{bits} bits each", flush=True)
    with SandboxProcess(state, sandbox_args, timeout=3600) as sandbox:
        control = sandbox.control
        stats = await asyncio.to_thread(control.stats)
        seed = json.loads((state / "seed.json").read_text())
        items = sum(len(e["items"]) for e in seed["sealed_secrets"])
        print(f"sandbox: ready in {sandbox.ready_after:.1f} s (seeding "
              f"{stats.get('seed_seconds', 0):.1f} s), {stats['rss_mb']:.0f} MB resident; "
              f"{items} items", flush=True)
        with RsaSampler(bits) as sampler:
            # Baseline: the plain client, with the daemon's concurrency.
            kubeconfig = yaml.load((state / "kubeconfig").read_bytes(),
                                   Loader=yaml.CSafeLoader)
            mark = sampler.mark()
            assert sandbox.process is not None
            meter = SandboxMeter(sandbox.process.pid, control)
            served_before = await meter.read()
            cpu_before, sampled = time.process_time(), sampler.cpu_so_far
            base_client_wall, listed = await plain_client(kubeconfig, concurrency)
            base_client_cpu = time.process_time() - cpu_before - (sampler.cpu_so_far - sampled)
            client_cost, client_served = (await meter.read()).since(served_before)
            assert listed == clusters * SEALED_SECRETS, listed
            print(f"sandbox serving the plain client: {client_cost:.1f} CPU-s; served: "
                  f"{client_served}", flush=True)
            # ... and the RSA floor's wall time, measured: the items' decrypts on every core.
            floor_run = await asyncio.to_thread(sampler.run_floor, items, cores)
            # The daemon.
            with tempfile.TemporaryDirectory(prefix="sf-notify-") as notify_dir, \
                    (state / "daemon.log").open("ab") as log:
                run, transport = await start_daemon(state, Path(notify_dir) / "notify", log)
                try:
                    result = await observe_daemon(run, clusters, state, meter, items, bits,
                                                  cores, concurrency, sampler, mark,
                                                  base_client_wall, base_client_cpu, floor_run,
                                                  outage=outage, outage_seconds=outage_seconds)
                finally:
                    stop_daemon(run)
                    transport.close()
            # The floor's wall again, the daemon gone: one short run beside a long pass
            # on a machine whose speed drifts (steal time) made the wall ratio swing
            # more than the code did.  The curve's baseline takes the two runs' mean.
            floor_after = await asyncio.to_thread(sampler.run_floor, items, cores)
            floor_mean = (floor_run.wall + floor_after.wall) / 2
            print(f"RSA floor run again after the daemon stopped: {floor_after.wall:.1f} s "
                  f"(before it: {floor_run.wall:.1f} s); the pass against the baseline "
                  f"with each: {result.wall / (floor_run.wall + base_client_wall):.2f} and "
                  f"{result.wall / (floor_after.wall + base_client_wall):.2f}, with their "
                  f"mean {result.wall / (floor_mean + base_client_wall):.2f} (the curve's)",
                  flush=True)
            result.base_wall = floor_mean + base_client_wall
        stats = await asyncio.to_thread(control.stats)
        print(f"sandbox at the end: {stats['rss_mb']:.0f} MB resident, peak "
              f"{stats['peak_rss_mb']:.0f} MB", flush=True)
    return result


PROFILE_DIR: Path | None = None   # --profile


@contextlib.contextmanager
def profiled(run: str, pids: dict[str, int]) -> Iterator[None]:
    """Each thread's CPU time over the first pass, printed (the daemon's event loop, its
    store and executor threads, its RSA workers, the sandbox); and when asked
    (``--profile DIR``) py-spy (``pip install py-spy``) on the daemon and the sandbox:
    collapsed stacks of the threads holding the GIL in DIR/<run>-<name>.txt (py-spy's
    idle detection cannot tell a thread blocked in a queue from one that runs, hence
    the CPU times)."""
    spies: list[subprocess.Popen[bytes]] = []
    if PROFILE_DIR is not None:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spies = [subprocess.Popen([binary, "record", "--pid", str(pid), "--gil",
                                   "--rate", "100", "--format", "raw", "--threads", "-o",
                                   str(PROFILE_DIR / f"{run}-{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items()]
    before = {name: thread_cpu(pid) for name, pid in pids.items()}
    try:
        yield
    finally:
        for name, pid in pids.items():
            after = thread_cpu(pid)
            spent = sorted(((cpu - before[name].get(thread, 0.0), thread)
                            for thread, cpu in after.items()), reverse=True)
            print(f"{name} threads' CPU over the pass: " + ", ".join(
                f"{thread} {cpu:.2f}" for cpu, thread in spent if cpu >= 0.05))
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(120)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread (name/tid) of *pid* and of its children's processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for process in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{process}/task/{task}/stat").read_text()
                    name = stat[stat.index("(") + 1:stat.rindex(")")]
                    fields = stat[stat.rindex(")") + 2:].split()
                    key = ("event loop" if task == str(pid) else name) if process == pid \
                        else f"child {name}"
                    spent[f"{key}/{task}"] = (int(fields[11]) + int(fields[12])) / ticks
    return spent


async def observe_daemon(run: DaemonRun, clusters: int, state: Path, meter: SandboxMeter,
                         items: int,
                         bits: int, cores: int, concurrency: int, sampler: RsaSampler,
                         mark: int, base_client_wall: float, base_client_cpu: float,
                         floor_run: FloorRun, *, outage: bool, outage_seconds: float) -> Result:
    plain_socket = state / "plain.sock"
    plain_bytes = clusters * REPORT_BYTES_PER_CLUSTER
    with plain_server(plain_socket, plain_bytes):
        async with Prober(state / "api.sock") as prober, Prober(plain_socket) as plain:
            plain.parse_every = 1 << 62   # its body is not a report
            result = await _observe(run, clusters, state, meter, items, bits, cores,
                                    concurrency, sampler, mark, base_client_wall,
                                    base_client_cpu, floor_run, prober, plain, plain_bytes,
                                    outage=outage, outage_seconds=outage_seconds)
    if outage:
        await restart(run, clusters, state, meter.control)
    return result


async def _observe(run: DaemonRun, clusters: int, state: Path, meter: SandboxMeter,
                   items: int,
                   bits: int, cores: int, concurrency: int, sampler: RsaSampler,
                   mark: int, base_client_wall: float, base_client_cpu: float,
                   floor_run: FloorRun, prober: Prober, plain: Prober, plain_bytes: int, *,
                   outage: bool, outage_seconds: float) -> Result:
    await asyncio.wait_for(run.scanning.wait(), 120)
    served_before = await meter.read()
    with profiled(f"{clusters}-{bits}", {"daemon": run.process.pid, "sandbox": meter.pid}):
        await asyncio.wait_for(run.ready.wait(), 3600)
    sandbox_cpu, sandbox_served = (await meter.read()).since(served_before)
    counters = await prober.counters_now()
    decrypts = int(counters["sealfleet_rsa_decrypts_total"])
    rsa_thread_cpu = counters["sealfleet_rsa_cpu_seconds_total"]
    rsa_thread_busy = counters["sealfleet_rsa_busy_seconds_total"]
    writes = counters["sealfleet_store_writes_total"]
    transactions = counters["sealfleet_store_write_transactions_total"]
    wall, cpu = run.ready_at - run.scanning_at, run.cpu_ready - run.cpu_scanning
    rsa_wall = floor_run.wall
    floor = sampler.floor(mark)
    rsa_cpu = items * floor.median
    base_cpu = rsa_cpu + base_client_cpu
    ideal_wall = rsa_cpu / cores + base_client_wall
    base_wall = rsa_wall + base_client_wall
    print(f"RSA floor: {floor.describe()}: {rsa_cpu:.1f} CPU-s, {rsa_cpu / cores:.1f} s "
          f"on {cores} idle cores; the {items} decrypts run on {cores} threads here took "
          f"{rsa_wall:.1f} s")
    print(f"daemon's RSA decrypts in the pass: {decrypts} for {items} items "
          f"({decrypts / items:.2f} per item; the floor counts 1)")
    # A worker in an RSA job that does not run waits for a core (RSA on threads, as
    # before worker processes, waited for the GIL as well); the floor's threads, alone,
    # hardly wait.
    print(f"daemon's RSA workers in the pass: {rsa_thread_cpu:.1f} CPU-s in "
          f"{rsa_thread_busy:.1f} s of jobs: they ran {rsa_thread_cpu / rsa_thread_busy:.0%} "
          f"of the time they held a job (the floor's threads, alone: {floor_run.ran:.0%}); "
          f"{rsa_thread_busy / max(decrypts, 1) * 1000:.2f} ms per decrypt")
    print(f"daemon's store until READY: {writes:.0f} writes "
          f"({writes / clusters:.1f} per cluster) in {transactions:.0f} transactions "
          f"({writes / max(transactions, 1):.2f} writes per transaction)")
    print(f"plain client (TLS connect + paginated list + JSON parse per cluster, "
          f"{concurrency} at once): {base_client_wall:.2f} s wall, "
          f"{base_client_cpu:.2f} CPU-s")
    print(f"baseline = RSA floor (measured) + plain client: {base_wall:.2f} s wall "
          f"(ideal, RSA on idle cores: {ideal_wall:.2f} s), {base_cpu:.2f} CPU-s")
    print(f"daemon first full pass: {wall:.2f} s wall (ratio {wall / base_wall:.2f}; "
          f"{wall / ideal_wall:.2f} to the ideal), "
          f"{cpu:.2f} CPU-s (ratio {cpu / base_cpu:.2f}; target <= 2 each); per cluster "
          f"{wall / clusters * 1000:.1f} ms wall, {cpu / clusters * 1000:.1f} CPU-ms "
          f"(baseline {base_wall / clusters * 1000:.1f} ms, "
          f"{base_cpu / clusters * 1000:.1f} CPU-ms)", flush=True)
    # Where the wall time goes: the sandbox's apiservers serve the pass on the same cores,
    # so daemon + sandbox CPU over the cores is a floor for the pass's wall time here.
    bound = (cpu + sandbox_cpu) / cores
    print(f"sandbox serving the pass: {sandbox_cpu:.1f} CPU-s; served: {sandbox_served}")
    print(f"daemon + sandbox: {cpu + sandbox_cpu:.1f} CPU-s, at least {bound:.1f} s on "
          f"{cores} cores: the pass took {wall / bound:.2f} of that bound; the daemon's "
          f"CPU alone over {cores} cores is {cpu / cores / base_wall:.2f} of the baseline's "
          "wall", flush=True)
    visible = [(when - run.scanning_at, scanned) for when, scanned, _ in prober.reports
               if when <= run.ready_at]
    if visible:
        marks = []
        for share in (0.1, 0.5, 0.9):
            first = next((t for t, n in visible if n >= share * clusters), None)
            if first is not None:
                marks.append(f"{share:.0%} after {first:.1f} s")
        print(f"clusters scanned in the report during the pass: {', '.join(marks)}; "
              f"all at READY ({wall:.1f} s)")
    during = prober.between(run.scanning_at, run.ready_at)
    gaps = run.notifications.watchdog_gaps(run.scanning_at, run.ready_at)
    await asyncio.sleep(SETTLE_SECONDS)
    after_end = time.perf_counter()
    after = prober.between(run.ready_at + 1.0, after_end)
    rss_after = daemon_memory_mb(run.process.pid)
    per_cluster = (rss_after - run.rss_scanning) * 1024 / clusters
    workers, workers_mb = workers_pss_mb(run.process.pid)
    print(f"daemon RSS (with its RSA workers' PSS): {run.rss_scanning:.0f} MB when the fleet "
          f"started, {rss_after:.0f} MB {SETTLE_SECONDS:.0f} s after READY: "
          f"{per_cluster:.0f} KB per cluster (target < 300 KB beyond its 20 SealedSecrets); "
          f"of it {workers} RSA workers {workers_mb:.0f} MB", flush=True)
    object_kb = await objects_share(run, clusters, state, prober, concurrency,
                                    rss_after)
    print(latency_line("/api/v1/staleness during the first pass", during))
    print(latency_line(f"  baseline, a plain aiohttp server in its own process answering "
                       f"{plain_bytes / 1e6:.2f} MB (the daemon's body: "
                       f"{prober.last_size / 1e6:.2f} MB), probed alike, same time",
                       plain.between(run.scanning_at, run.ready_at)))
    print(latency_line("/api/v1/staleness after it", after))
    print(f"watchdog (WatchdogSec=60): {len(gaps) - 1} pings during the pass, longest gap "
          f"{max(gaps, default=0):.1f} s (the daemon pings every 5 s while it progresses)",
          flush=True)
    if outage:
        await outage_and_recovery(run, clusters, meter.control, prober, outage_seconds,
                                  concurrency)
    return Result(clusters, bits, items, wall, cpu, base_wall, base_cpu, per_cluster,
                  rss_after, run.rss_scanning, ideal_wall, os.getloadavg()[0],
                  object_kb)


async def objects_share(run: DaemonRun, clusters: int, state: Path, prober: Prober,
                        concurrency: int, rss_before: float) -> float:
    """RSS of one SealedSecret (KB): OBJECTS_ADDED more per cluster, taken in by the
    settled daemon's watches, over their number."""
    before = await prober.sealed_secrets_now()
    kubeconfig = yaml.load((state / "kubeconfig").read_bytes(), Loader=yaml.CSafeLoader)
    added = await add_objects(kubeconfig, OBJECTS_ADDED, concurrency)
    started = time.perf_counter()

    async def counted() -> bool:
        return await prober.sealed_secrets_now() >= before + added

    await wait_for(counted, every=1.0)
    await asyncio.sleep(SETTLE_SECONDS)
    rss_after = daemon_memory_mb(run.process.pid)
    object_kb = (rss_after - rss_before) * 1024 / added if added else float("nan")
    print(f"objects: {added} SealedSecrets added ({added / clusters:.1f} per cluster), in "
          f"the report after {time.perf_counter() - started - SETTLE_SECONDS:.1f} s; RSS "
          f"{rss_before:.0f} -> {rss_after:.0f} MB: the next SealedSecret costs "
          f"{object_kb:.2f} KB")
    return object_kb


async def empty_fleet(clusters: int, bits: int, state: Path) -> float:
    """RSS per cluster (KB) of the daemon over the same fleet without SealedSecrets."""
    sandbox_args = ["--clusters", str(clusters), "--sealed-secrets", "0",
                    "--keys", str(KEYS), "--key-bits", str(bits), "--namespaces", "10",
                    "--seed", "1", "--controller-startup-delay", "0"]
    with SandboxProcess(state, sandbox_args, timeout=3600) as sandbox, \
            tempfile.TemporaryDirectory(prefix="sf-notify-") as notify_dir, \
            (state / "daemon.log").open("ab") as log:
        print(f"sandbox without SealedSecrets: ready in {sandbox.ready_after:.1f} s",
              flush=True)
        run, transport = await start_daemon(state, Path(notify_dir) / "notify", log)
        try:
            await asyncio.wait_for(run.scanning.wait(), 120)
            await asyncio.wait_for(run.ready.wait(), 3600)
            await asyncio.sleep(SETTLE_SECONDS)
            rss_after = daemon_memory_mb(run.process.pid)
        finally:
            stop_daemon(run)
            transport.close()
    return (rss_after - run.rss_scanning) * 1024 / clusters


def split_line(r: Result) -> str:
    return (f"daemon RSS per cluster: {r.rss_per_cluster_kb:.0f} KB with {SEALED_SECRETS} "
            f"SealedSecrets each, {r.empty_kb:.0f} KB with none (same N, same run): the "
            f"objects' share {r.rss_per_cluster_kb - r.empty_kb:.0f} KB, beyond the objects "
            f"{r.empty_kb:.0f} KB (target < 300 KB); the next SealedSecret "
            f"{r.object_kb:.2f} KB")


async def outage_and_recovery(run: DaemonRun, clusters: int, control: Any, prober: Prober,
                              outage_seconds: float, concurrency: int) -> None:
    async def reachable(expected: int) -> bool:
        _, _, count = await prober.report_now()
        return count == expected

    requests_before = await asyncio.to_thread(control.requests)
    began = time.perf_counter()
    await asyncio.to_thread(control.set_faults, outage=True)
    down = await wait_for(lambda: reachable(0), every=0.25)
    await asyncio.sleep(max(0.0, outage_seconds - (time.perf_counter() - began)))
    counters = await asyncio.to_thread(control.reset_peak)
    during = prober.between(began, time.perf_counter())
    ended = time.perf_counter()
    await asyncio.to_thread(control.set_faults, outage=False)
    whole = await wait_for(lambda: reachable(clusters), every=0.25)
    after = await asyncio.to_thread(control.connections)
    requests_after = await asyncio.to_thread(control.requests)
    lists = requests_after.get("list sealedsecrets", 0) - \
        requests_before.get("list sealedsecrets", 0)
    print(f"outage: every cluster's apiserver down at once; the report showed all "
          f"{clusters} unreachable after {down - began:.1f} s; up again after "
          f"{ended - began:.1f} s")
    print(f"recovery: every cluster reachable {whole - ended:.1f} s after the apiservers "
          f"came back; peak TLS handshakes in flight at the sandbox {after['peak_handshaking']} "
          f"(connect gate {concurrency}); {after['accepted'] - counters['accepted']} "
          f"connections accepted; {lists} SealedSecret lists (resumed watches)")
    print(latency_line("/api/v1/staleness during the outage", during), flush=True)


async def restart(run: DaemonRun, clusters: int, state: Path, control: Any) -> None:
    requests_before = await asyncio.to_thread(control.requests)
    stop_daemon(run)
    with tempfile.TemporaryDirectory(prefix="sf-notify-") as notify_dir, \
            (state / "daemon.log").open("ab") as log:
        again, transport = await start_daemon(state, Path(notify_dir) / "notify", log)
        try:
            await asyncio.wait_for(again.scanning.wait(), 120)
            await asyncio.wait_for(again.ready.wait(), 3600)
            requests_after = await asyncio.to_thread(control.requests)
        finally:
            stop_daemon(again)
            transport.close()
    lists = requests_after.get("list sealedsecrets", 0) - \
        requests_before.get("list sealedsecrets", 0)
    watches = requests_after.get("watch sealedsecrets", 0) - \
        requests_before.get("watch sealedsecrets", 0)
    print(f"restart: READY {again.ready_at - again.scanning_at:.1f} s after scanning began, "
          f"{again.cpu_ready - again.cpu_scanning:.1f} CPU-s; {lists} SealedSecret lists, "
          f"{watches} watches resumed for {clusters} clusters", flush=True)


# --------------------------------------------------------------------- main


def summary(results: list[Result]) -> None:
    print("\n=== the curve: time per cluster and memory per cluster")
    print(f"{'clusters':>8} {'bits':>5} {'wall ms/cl':>11} {'base':>6} {'ratio':>6} "
          f"{'ideal':>6} {'CPU ms/cl':>10} {'base':>6} {'ratio':>6} {'RSS KB/cl':>10} "
          f"{'objects':>8} {'beyond':>7} {'next obj':>9} {'load':>5}")
    for r in results:
        print(f"{r.clusters:>8} {r.bits:>5} {r.wall / r.clusters * 1000:>11.1f} "
              f"{r.base_wall / r.clusters * 1000:>6.1f} {r.wall / r.base_wall:>6.2f} "
              f"{r.wall / r.ideal_wall:>6.2f} "
              f"{r.cpu / r.clusters * 1000:>10.1f} {r.base_cpu / r.clusters * 1000:>6.1f} "
              f"{r.cpu / r.base_cpu:>6.2f} {r.rss_per_cluster_kb:>10.0f} "
              f"{r.rss_per_cluster_kb - r.empty_kb:>8.0f} {r.empty_kb:>7.0f} "
              f"{r.object_kb:>9.2f} {r.load:>5.1f}")
    print("(ratio: to the baseline measured in the run, its RSA floor the mean of a floor "
          "run before the daemon and one after it; ideal: wall to the RSA floor on idle "
          "cores plus the plain client; RSS per cluster = its objects' share + beyond them, "
          "the RSS per cluster of the same fleet without SealedSecrets; next obj: KB of one "
          f"more SealedSecret, {OBJECTS_ADDED} added per cluster to the settled daemon)")
    same = sorted((r for r in results if r.bits == 2048), key=lambda r: r.clusters)
    for small, big in itertools.pairwise(same):
        slope = (big.rss_after_mb - big.rss_before_mb - small.rss_after_mb
                 + small.rss_before_mb) * 1024 / (big.clusters - small.clusters)
        print(f"RSS slope {small.clusters} -> {big.clusters} clusters: {slope:.0f} KB per "
              "added cluster")


async def main_async(args: argparse.Namespace) -> None:
    sizes = [int(n) for n in args.clusters.split(",")]
    outage_at = args.outage_at if args.outage_at is not None else max(sizes)
    runs = [(n, 2048) for n in sizes]
    if args.rsa4096_at in sizes:
        runs.insert(sizes.index(args.rsa4096_at) + 1, (args.rsa4096_at, 4096))
    print(f"machine: {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f}; "
          f"connect_concurrency {args.concurrency} (the daemon's default)")
    results = []
    for clusters, bits in runs:
        with tempfile.TemporaryDirectory(prefix="sealfleet-fleet-") as tmp:
            try:
                results.append(await measure(
                    clusters, bits, Path(tmp) / "state", concurrency=args.concurrency,
                    outage=clusters == outage_at and bits == 2048,
                    outage_seconds=args.outage_seconds))
                if not args.no_empty:
                    results[-1].empty_kb = await empty_fleet(clusters, bits,
                                                             Path(tmp) / "empty")
                    print(split_line(results[-1]), flush=True)
            finally:
                if args.log_dir is not None:  # the state directory goes, its logs stay
                    args.log_dir.mkdir(parents=True, exist_ok=True)
                    for name in ("daemon.log", "sandbox.log"):
                        with contextlib.suppress(OSError):
                            shutil.copy(Path(tmp) / "state" / name,
                                        args.log_dir / f"{clusters}-{bits}-{name}")
    summary(results)
    print(f"1-min load average at the end {os.getloadavg()[0]:.1f} (other processes stretch "
          "wall times; CPU times hardly)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="10,100",
                        help="comma-separated fleet sizes (default 10,100; 10,100,1000 in full)")
    parser.add_argument("--rsa4096-at", type=int, default=10,
                        help="also run this fleet size with 4096-bit keys (default 10)")
    parser.add_argument("--outage-at", type=int, default=None,
                        help="fleet size of the outage and restart runs (default the largest)")
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--no-empty", action="store_true",
                        help="skip the fleet without SealedSecrets (the RSS split)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="copy each run's daemon and sandbox logs here")
    parser.add_argument("--concurrency", type=int,
                        default=config.FleetSettings().connect_concurrency,
                        help="the daemon's [fleet] connect_concurrency (its default), for the "
                             "baseline")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the daemon and the sandbox over each first pass into "
                             "this directory (profiling slows the pass: its figures are off)")
    args = parser.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
