"""Scan benchmark: the daemon's collect side against a fleet of sandbox clusters.

The sandbox runs in a separate process (``sealfleet sandbox``); this process plays
the daemon (FleetManager + Store, the production code).  Every figure is printed next
to a baseline measured in the same run, as a ratio:

1. first full scan with attribution, against the RSA floor: total items x one RSA
   decrypt, at the cost per decrypt sampled by a thread throughout the scan (median and
   spread printed; see ``rsa_floor``), spread over threads = cores;
2. a rescan with nothing changed (restart, stored resourceVersions dropped so that
   every cluster relists), against a raw paginated list-and-parse of the same objects
   with the same client code; it must cost zero RSA operations;
3. the daemon process's peak RSS.

Usage: ``python bench/scan.py [--clusters 20] [--sealed-secrets 5000] [--state-dir DIR]``
(an existing ``--state-dir`` with a running sandbox is reused).  ``bench/fleet.py``
measures the fleet's scaling (10 to 1,000 clusters) against the same kind of floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from rsa_floor import RsaSampler
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster import sealed_secret_observer
from sealfleet.app.fleet import FleetManager
from sealfleet.sandbox import SandboxProcess


def peak_rss_mb() -> float:
    """The process's RSS high-water mark so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.asynccontextmanager
async def running(manager: FleetManager) -> AsyncIterator[FleetManager]:
    task = asyncio.create_task(manager.run(), name="bench:fleet")
    try:
        yield manager
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def scan(settings: Any, store: Store,
               executor: ThreadPoolExecutor) -> tuple[float, float, int, int]:
    """(wall seconds, process CPU seconds, RSA operations, items) of one full pass."""
    manager = FleetManager(settings, store, executor=executor)
    started, cpu_started = time.perf_counter(), time.process_time()
    async with running(manager):
        await manager.first_pass_done.wait()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        unreachable = [n for n, w in manager.workers.items() if not w.reachable]
        if unreachable:
            raise SystemExit(f"clusters unreachable during the scan: {unreachable}")
        items = sum(len(entry.item_keys) for worker in manager.workers.values()
                    for entry in worker.inventory.entries())
        return elapsed, cpu, manager.attributor.rsa_operations, items


async def raw_list(settings: Any) -> tuple[float, int]:
    """Baseline: every cluster's SealedSecrets listed (limit 500) and parsed, concurrently."""
    async def one(cluster: Any) -> int:
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context) as client:
            count = 0
            async for page in client.list_pages(controller.SEALED_SECRETS_PATH):
                count += len(page.items)
            return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(c) for c in settings.clusters))
    return time.perf_counter() - started, sum(counts)


async def main_async(args: argparse.Namespace, state_dir: Path) -> None:
    settings = config.load_settings(state_dir / "sealfleet.toml")
    database = Path(tempfile.mkdtemp(prefix="sealfleet-bench-")) / "inventory.db"
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(cores, thread_name_prefix="rsa") as executor, \
            RsaSampler(args.key_bits) as sampler:
        async with Store.open(database, kek=kek) as store:
            sampler_cpu = sampler.cpu_so_far
            first_scan, first_cpu, rsa_ops, items = await scan(settings, store, executor)
            first_cpu -= sampler.cpu_so_far - sampler_cpu  # the sampling is not the scan's
            floor_sample = sampler.floor()
            rss_first_scan = peak_rss_mb()
            counts = await store.inventory.state_counts()
            objects = sum(sum(c.values()) for c in counts.values())
            cpu_floor = items * floor_sample.median
            floor = cpu_floor / cores
            print(f"objects={objects} items={items} rsa_ops={rsa_ops} "
                  f"({rsa_ops / items:.3f} per item); RSA floor: {floor_sample.describe()}")
            print(f"first full scan: {first_scan:.2f} s; RSA floor {floor:.2f} s "
                  f"({cores} threads); ratio {first_scan / floor:.2f} (target <= 1.25)")
            print(f"first full scan CPU: {first_cpu:.1f} CPU-s; RSA CPU floor {cpu_floor:.1f} "
                  f"CPU-s; ratio {first_cpu / cpu_floor:.2f} (p10..p90 of the floor: "
                  f"{first_cpu / (items * floor_sample.p90):.2f}..."
                  f"{first_cpu / (items * floor_sample.p10):.2f}; steadier on a shared "
                  "machine)")

            for cluster in settings.clusters:
                await store.inventory.set_watch_resource_version(
                    cluster.name, sealed_secret_observer.RESOURCE, None)
            rescan, _, rescan_rsa, _ = await scan(settings, store, executor)
            rss_daemon = peak_rss_mb()  # before the baseline's own lists add their pages
            baseline, listed = await raw_list(settings)
            print(f"no-change rescan: {rescan:.2f} s, rsa_ops={rescan_rsa}; raw list+parse of "
                  f"{listed} objects {baseline:.2f} s; ratio {rescan / baseline:.2f} "
                  "(target <= 2, zero RSA)")
    print(f"daemon peak RSS: {rss_daemon:.0f} MB over both scans ({rss_first_scan:.0f} MB "
          f"after the first; target < 400); process peak including the raw-list baseline: "
          f"{peak_rss_mb():.0f} MB")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--sealed-secrets", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--key-bits", type=int, default=4096, choices=(2048, 3072, 4096))
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.state_dir is not None:
        if (args.state_dir / "ready").exists():  # a sandbox already running there
            asyncio.run(main_async(args, args.state_dir))
            return
        run_with_sandbox(args, args.state_dir)
        return
    # A temporary sandbox holds a KEK and tokens: leave nothing of it behind.
    with tempfile.TemporaryDirectory(prefix="sealfleet-sandbox-") as tmp:
        run_with_sandbox(args, Path(tmp))


def run_with_sandbox(args: argparse.Namespace, state_dir: Path) -> None:
    sandbox_args = ["--clusters", str(args.clusters), "--sealed-secrets",
                    str(args.sealed_secrets), "--seed", str(args.seed), "--keys", str(args.keys),
                    "--key-bits", str(args.key_bits), "--namespaces", "10"]
    with SandboxProcess(state_dir, sandbox_args, timeout=900) as sandbox:
        print(f"sandbox ready in {sandbox.ready_after:.1f} s ({args.clusters} clusters x "
              f"{args.sealed_secrets} SealedSecrets, {args.keys} keys of {args.key_bits} bits)")
        asyncio.run(main_async(args, state_dir))


if __name__ == "__main__":
    main()
