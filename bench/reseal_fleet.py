"""Fleet reseal benchmark: the daemon's reseal job, end to end, against the RSA floor.

The sandbox runs in a separate process (``sealfleet sandbox``: N clusters x M stale
SealedSecrets, RSA-4096 keys); this process plays the daemon with its production code
(FleetManager, Store, JobRunner, key and reseal executors) in master mode.  Each round
makes the fleet stale (a new master key: ``key_sync`` the first time, ``renewal`` after),
waits until the inventory knows it, then times a ``reseal`` job from submit to
``succeeded``: plan, journal, every object read, resealed on the RSA pool, written
with its resourceVersion, and waited for until its controller reports Synced for the new
generation, then verified.

The *RSA floor* is measured in the same run, in slices alternating with the rounds: one
RSA-OAEP decrypt plus one encrypt per item (4096-bit keys, the pool sized to the CPUs,
nothing else), the least any reseal must spend.  Printed: items/s of each job beside the
floor (median and spread of the slices), their ratio (target >= 0.6: the sandbox shares
the cores), and the CPU seconds of the daemon and of the sandbox over each job.

Usage: ``python bench/reseal_fleet.py [--clusters 4] [--sealed-secrets 150]
[--rounds 2]``; the issue's figure: ``--clusters 20 --sealed-secrets 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord
from sealfleet.app import config
from sealfleet.app.fleet import FleetManager
from sealfleet.app.jobs import key_jobs, reseal
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.runner import JobRunner
from sealfleet.domain.keys import generate_sealing_key
from sealfleet.domain.resealing import rsa_threads
from sealfleet.sandbox import SandboxProcess

TARGET_RATIO = 0.6
JOB_TIMEOUT = 1800.0
POLL = 0.05
BITS = 4096


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


class Floor:
    """The RSA floor: one OAEP-SHA256 decrypt + encrypt per item, on the RSA threads."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int) -> None:
        old, new = generate_sealing_key(bits=BITS), generate_sealing_key(bits=BITS)
        self._private, self._public = old.private_key, new.public_key
        self._oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                  algorithm=hashes.SHA256(), label=b"team-1/app")
        self._part = old.public_key.encrypt(os.urandom(32), self._oaep)
        self._pool, self._threads = pool, threads
        self.rates: list[float] = []
        self.cpu_per_item: list[float] = []   # CPU seconds of the RSA threads per item

    def _work(self, count: int) -> tuple[int, float]:
        started = time.thread_time()
        for _ in range(count):
            self._public.encrypt(self._private.decrypt(self._part, self._oaep), self._oaep)
        return count, time.thread_time() - started

    async def slice(self, items: int) -> float:
        """Items/s over one slice of *items* pairs (recorded)."""
        loop = asyncio.get_running_loop()
        per = max(items // self._threads, 1)
        started = time.perf_counter()
        parts = await asyncio.gather(*(loop.run_in_executor(self._pool, self._work, per)
                                       for _ in range(self._threads)))
        done = sum(count for count, _ in parts)
        rate = done / (time.perf_counter() - started)
        self.rates.append(rate)
        self.cpu_per_item.append(sum(cpu for _, cpu in parts) / done)
        return rate


@dataclass(frozen=True)
class Round:
    items: int
    objects: int
    wall: float
    daemon_cpu: float
    sandbox_cpu: float

    @property
    def rate(self) -> float:
        return self.items / self.wall


class Daemon:
    def __init__(self, state_dir: Path, store: Store, executor: ThreadPoolExecutor) -> None:
        data: dict[str, Any] = tomllib.loads((state_dir / "sealfleet.toml").read_text())
        data["fleet"] = {"master": True, "key_bits": BITS}
        self.settings = config.settings_from_mapping(data, base_dir=state_dir)
        self.store = store
        self.manager = FleetManager(self.settings, store, executor=executor)
        context = JobContext(store, self.manager.keystore, lambda: self.settings)
        executors, self.resealer = reseal.build(
            context, executor, key_jobs.build(context),
            lambda kind, params, actor: self.runner.submit(kind, params, actor=actor))
        self.runner = JobRunner(store, executors)

    async def run_job(self, kind: str, params: dict[str, Any]) -> JobRecord:
        job = await self.runner.submit(kind, params, actor="bench")
        async with asyncio.timeout(JOB_TIMEOUT):
            while True:
                found = await self.store.jobs.get_job(job.id)
                if found is not None and found.state in ("succeeded", "failed"):
                    break
                await asyncio.sleep(POLL)
        if found.state != "succeeded":
            raise SystemExit(f"{kind} job {job.id} failed: {found.error}")
        return found

    async def wait_planned(self, objects: int) -> int:
        """Until the plan holds every object (the inventory caught up); its items."""
        async with asyncio.timeout(JOB_TIMEOUT):
            while True:
                plan = await self.resealer.dry_run({})
                if plan["planned"] == objects:
                    items = plan["items"]
                    assert isinstance(items, int)
                    return items
                await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def daemon(state_dir: Path, executor: ThreadPoolExecutor) -> AsyncIterator[Daemon]:
    store_settings = config.load_settings(state_dir / "sealfleet.toml").store
    kek = KeyEncryptionKey.from_file(store_settings.kek_file)
    async with Store.open(store_settings.database, kek=kek) as store:
        fleet = Daemon(state_dir, store, executor)
        tasks = [asyncio.create_task(fleet.manager.run()), asyncio.create_task(fleet.runner.run())]
        try:
            async with asyncio.timeout(JOB_TIMEOUT):
                await fleet.manager.first_pass_done.wait()
            yield fleet
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def measure(state_dir: Path, pid: int, args: argparse.Namespace,
                  ) -> tuple[Floor, list[Round]]:
    threads = rsa_threads()
    objects = args.clusters * args.sealed_secrets
    rounds: list[Round] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="rsa") as pool:
        floor = Floor(pool, threads)
        async with daemon(state_dir, pool) as fleet:
            for index in range(args.rounds):
                await fleet.run_job("key_sync" if index == 0 else "renewal", {})
                items = await fleet.wait_planned(objects)
                await floor.slice(args.slice)
                cpu, sandbox_cpu = time.process_time(), proc_cpu(pid)
                started = time.perf_counter()
                job = await fleet.run_job("reseal", {})
                wall = time.perf_counter() - started
                totals = job.result["totals"]
                assert isinstance(totals, dict), totals
                assert totals["failed"] == 0, totals
                rounds.append(Round(items, objects, wall, time.process_time() - cpu,
                                    proc_cpu(pid) - sandbox_cpu))
                phases = [s.detail.get("seconds") for s in
                          await fleet.store.jobs.job_items(job.id)]
                print(f"  round {index + 1} cluster steps (write, wait for Synced): " + ", ".join(
                    f"{p['write']:.1f}+{p['synced']:.1f}" for p in phases
                    if isinstance(p, dict)), flush=True)
                await floor.slice(args.slice)
    return floor, rounds


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--sealed-secrets", type=int, default=150, help="per cluster")
    parser.add_argument("--rounds", type=int, default=2, help="reseal jobs timed")
    parser.add_argument("--slice", type=int, default=200,
                        help="decrypt+encrypt pairs per floor slice")
    args = parser.parse_args()
    sandbox_args = ["--clusters", str(args.clusters), "--sealed-secrets",
                    str(args.sealed_secrets), "--namespaces", "5", "--keys", "1",
                    "--key-bits", str(BITS), "--seed", "1", "--controller-startup-delay", "0"]
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-reseal-") as tmp:
        state_dir = Path(tmp)
        with SandboxProcess(state_dir, sandbox_args, timeout=1800) as sandbox:
            floor, rounds = asyncio.run(measure(state_dir, sandbox.pid, args))
    rates = floor.rates
    median = statistics.median(rates)
    print(f"reseal job: {args.clusters} clusters x {args.sealed_secrets} SealedSecrets, "
          f"RSA-{BITS}, {rsa_threads()} RSA threads, load {os.getloadavg()[0]:.1f}")
    print(f"  RSA floor (decrypt+encrypt per item) {median:7.1f} items/s  "
          f"median of {len(rates)} slices, spread {min(rates):.1f} .. {max(rates):.1f}")
    for index, measured in enumerate(rounds, 1):
        ratio = measured.rate / median
        print(f"  round {index}: {measured.items} items in {measured.objects} objects, "
              f"{measured.wall:6.2f} s wall  {measured.rate:7.1f} items/s  ratio "
              f"{ratio:4.2f} {'ok' if ratio >= TARGET_RATIO else 'BELOW TARGET'} "
              f"(target >= {TARGET_RATIO})")
        floor_cpu = measured.items * statistics.median(floor.cpu_per_item)
        print(f"           CPU: daemon {measured.daemon_cpu:6.2f} s, sandbox "
              f"{measured.sandbox_cpu:6.2f} s; the floor's CPU for these items "
              f"{floor_cpu:6.2f} s (ratio per daemon CPU-second "
              f"{floor_cpu / max(measured.daemon_cpu, 1e-9):4.2f}; the sandbox's controllers "
              f"unseal every item on the same cores)")


if __name__ == "__main__":
    main()
