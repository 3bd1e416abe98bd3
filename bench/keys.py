"""Key benchmark: a renewal (a new master key synced) to 50 clusters against one.

The sandbox runs in a separate process (``sealfleet sandbox``), so the daemon does not
share its event loop and GIL with the emulated apiservers and controllers; this process
plays the daemon with its production code (FleetManager, Store, JobRunner, the key
executors) in master mode.  For each fleet size:

1. ``key_sync`` makes the first master key and gives it to every cluster (warm-up);
2. ``renewal`` is timed from submit to ``succeeded``: a new key generated and journaled,
   its key Secret written to every cluster, every controller restarted (at most
   ``[fleet] restart_concurrency`` at once) and waited for until it serves the new key.

The one-cluster renewal is the baseline of the same run; the 50-cluster one is printed
beside it as a ratio, with the targets (ratio < 3, < 20 s).  Each figure is the median of
``--repeats`` renewals; the 50-cluster renewal is repeated with other concurrencies on
the same sandbox (each renewal adds one key to every cluster).

Usage: ``python bench/keys.py [--clusters 50] [--startup-delay 1.0]
[--concurrency 64 32 4] [--repeats 3]`` (64 is the daemon's default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
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

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobItem, JobRecord
from sealfleet.app import config
from sealfleet.app.fleet import FleetManager
from sealfleet.app.jobs import key_jobs
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.runner import JobRunner
from sealfleet.sandbox import SandboxProcess

TARGET_RATIO = 3.0
TARGET_SECONDS = 20.0
JOB_TIMEOUT = 300.0         # a job still unfinished by then stops the bench
FIRST_PASS_TIMEOUT = 120.0
POLL = 0.02                 # job polling period: the timing's resolution


@dataclass(frozen=True)
class Timed:
    """One job, measured from this process."""

    job: JobRecord
    steps: list[JobItem]
    wall: float             # submit called -> succeeded seen
    submit: float           # submit call alone: plan (key generation), journal
    cpu: float              # this (the daemon's) process's CPU seconds over the job

    def cluster_finish_times(self) -> list[float]:
        """Seconds from the job's start to each cluster step's end."""
        start = self.job.started_at or self.job.created_at
        return sorted((s.updated_at - start).total_seconds() for s in self.steps
                      if s.ref.startswith("cluster:"))


class Daemon:
    """The daemon's side against one sandbox; settings swappable between jobs."""

    def __init__(self, state_dir: Path, store: Store, executor: ThreadPoolExecutor,
                 concurrency: int) -> None:
        self._state_dir = state_dir
        self.settings = self.master_settings(concurrency)
        self.store = store
        self.manager = FleetManager(self.settings, store, executor=executor)
        context = JobContext(store, self.manager.keystore, lambda: self.settings)
        self.runner = JobRunner(store, key_jobs.build(context))

    def master_settings(self, concurrency: int) -> config.Settings:
        config_file = self._state_dir / "sealfleet.toml"
        data: dict[str, Any] = tomllib.loads(config_file.read_text())
        data["fleet"] = {"master": True, "key_bits": 2048,
                         "restart_concurrency": concurrency}
        return config.settings_from_mapping(data, base_dir=self._state_dir)

    async def run_job(self, kind: str) -> Timed:
        cpu_started, started = time.process_time(), time.perf_counter()
        job = await self.runner.submit(kind, {}, actor="bench")
        submitted = time.perf_counter() - started
        async with asyncio.timeout(JOB_TIMEOUT):
            while True:
                found = await self.store.jobs.get_job(job.id)
                if found is not None and found.state in ("succeeded", "failed", "cancelled"):
                    break
                await asyncio.sleep(POLL)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if found.state != "succeeded":
            raise SystemExit(f"{kind} job {job.id} ended {found.state}: {found.error}")
        return Timed(found, await self.store.jobs.job_items(job.id), wall, submitted, cpu)


@contextlib.asynccontextmanager
async def daemon(state_dir: Path, concurrency: int) -> AsyncIterator[Daemon]:
    store_settings = config.load_settings(state_dir / "sealfleet.toml").store
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="rsa") as executor:
        kek = KeyEncryptionKey.from_file(store_settings.kek_file)
        async with Store.open(store_settings.database, kek=kek) as store:
            fleet = Daemon(state_dir, store, executor, concurrency)
            manager_task = asyncio.create_task(fleet.manager.run(), name="bench:fleet")
            jobs_task = asyncio.create_task(fleet.runner.run(), name="bench:jobs")
            try:
                async with asyncio.timeout(FIRST_PASS_TIMEOUT):
                    await fleet.manager.first_pass_done.wait()
                yield fleet
            finally:
                for task in (jobs_task, manager_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


def sandbox_args(clusters: int, args: argparse.Namespace) -> list[str]:
    return ["--clusters", str(clusters), "--sealed-secrets", str(args.sealed_secrets),
            "--namespaces", "1", "--keys", "1", "--key-bits", "2048", "--seed", "1",
            "--controller-startup-delay", f"{args.startup_delay:g}"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def describe(label: str, timed: Timed, sandbox_cpu: float, samples: list[float]) -> str:
    finishes = timed.cluster_finish_times()
    spread = (f"cluster steps done after {finishes[0]:.2f} .. {finishes[-1]:.2f} s "
              f"(median {statistics.median(finishes):.2f})" if finishes else "no cluster step")
    runs = ", ".join(f"{wall:.2f}" for wall in samples)
    return (f"{label:<34} {timed.wall:7.2f} s median of [{runs}]\n"
            f"    median run: submit incl. keygen {timed.submit:.2f} s; {spread}; "
            f"daemon CPU {timed.cpu:.2f} s, sandbox CPU {sandbox_cpu:.2f} s")


async def measure(state_dir: Path, pid: int, concurrencies: list[int], repeats: int,
                  ) -> list[tuple[int, Timed, float, list[float]]]:
    """Per concurrency: (concurrency, the median renewal, the sandbox's CPU seconds over
    it, every renewal's wall seconds).  Each renewal adds a key to every cluster."""
    measured = []
    async with daemon(state_dir, concurrencies[0]) as fleet:
        await fleet.run_job("key_sync")     # the first master key, everywhere
        for concurrency in concurrencies:
            fleet.settings = fleet.master_settings(concurrency)
            runs: list[tuple[Timed, float]] = []
            for _ in range(repeats):
                sandbox_before = cpu_seconds(pid)
                renewal = await fleet.run_job("renewal")
                runs.append((renewal, cpu_seconds(pid) - sandbox_before))
            runs.sort(key=lambda run: run[0].wall)
            median, sandbox_cpu = runs[len(runs) // 2]
            measured.append((concurrency, median, sandbox_cpu, [r.wall for r, _ in runs]))
    return measured


def run_fleet(clusters: int, concurrencies: list[int], args: argparse.Namespace,
              ) -> tuple[float, list[tuple[int, Timed, float, list[float]]]]:
    """(sandbox start seconds, measurements); everything torn down on return."""
    # The state directory holds a KEK, tokens and private keys: leave nothing behind.
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-keys-") as tmp:
        state_dir = Path(tmp)
        with SandboxProcess(state_dir, sandbox_args(clusters, args), timeout=600) as sandbox:
            assert sandbox.ready_after is not None
            return sandbox.ready_after, asyncio.run(measure(state_dir, sandbox.pid,
                                                            concurrencies, args.repeats))


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--sealed-secrets", type=int, default=2,
                        help="SealedSecrets seeded per cluster (a restart unseals them)")
    parser.add_argument("--startup-delay", type=float, default=1.0,
                        help="sandbox controllers' start-up delay after a restart, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 32, 4],
                        help="[fleet] restart_concurrency values; the first is the headline")
    parser.add_argument("--repeats", type=int, default=3,
                        help="renewals per figure; the median is printed (the serving "
                             "poll's jittered backoff makes one renewal noisy)")
    args = parser.parse_args()

    wall_started, cpu_started = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()[0]
    one_start, (one,) = run_fleet(1, [args.concurrency[0]], args)
    many_start, many = run_fleet(args.clusters, args.concurrency, args)

    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other processes stretch wall time, not CPU)")
    print(f"sandbox: controller start-up delay {args.startup_delay:g} s, 2048-bit keys, "
          f"{args.sealed_secrets} SealedSecrets per cluster; ready in {one_start:.1f} s "
          f"(1 cluster), {many_start:.1f} s ({args.clusters} clusters)")
    _, baseline, baseline_cpu, samples = one
    print(describe("renewal, 1 cluster", baseline, baseline_cpu, samples))
    for concurrency, renewal, sandbox_cpu, samples in many:
        label = f"renewal, {args.clusters} clusters, conc {concurrency}"
        print(describe(label, renewal, sandbox_cpu, samples))
        ratio = renewal.wall / baseline.wall
        rounds = -(-args.clusters // concurrency)
        verdict = ("MET" if ratio < TARGET_RATIO and renewal.wall < TARGET_SECONDS
                   else "MISSED")
        print(f"  -> {ratio:.2f}x one cluster (target < {TARGET_RATIO:g}x), {renewal.wall:.2f} s "
              f"(target < {TARGET_SECONDS:g} s): {verdict}; {rounds} restart rounds of "
              f"{concurrency}: floor ~{rounds} x one cluster's step")
    print(f"bench wall time {time.perf_counter() - wall_started:.1f} s, daemon (this process) "
          f"CPU {time.process_time() - cpu_started:.1f} s, finished "
          f"{dt.datetime.now(dt.UTC):%H:%M:%S}Z")


if __name__ == "__main__":
    main()
