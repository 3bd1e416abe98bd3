"""Fleet reseal benchmark: the daemon's reseal job, end to end, against the RSA floor.

The sandbox runs in a separate process (``sealfleet sandbox``: N clusters x M stale
SealedSecrets, RSA-4096 keys); this process plays the daemon with its production code
(FleetManager, Store, JobRunner, key and reseal executors) in master mode.  Each round
makes the fleet stale (a new master key: ``key_sync`` the first time, ``renewal`` after),
waits until the inventory knows it, then times a ``reseal`` job from submit to
``succeeded``: plan, journal, every object read, resealed on the RSA pool, written
with its resourceVersion, and waited for until its controller reports Synced for the new
generation, then verified.

Two floors are measured in the same run, in slices alternating with the rounds, on a
pool sized to the CPUs (4096-bit keys, nothing else):

- the *RSA ceiling* (the issue's): one RSA-OAEP decrypt (D) plus one encrypt (E) per
  item, the least the daemon must spend; the issue's ratio (target >= 0.6) is items/s of
  the job over this;
- the *system floor*: D + E + D per item.  The sandbox's controllers share these cores,
  and like the real controller they unseal every object written to them, one more
  private-key operation (D) per item.  Since D is some 15-20 times E, the best any
  reseal can do here is (D+E)/(2D+E), about 0.5 of the RSA ceiling; the ratio against
  the system floor says how close the whole (daemon + sandbox) comes to what the RSA
  work allows (1.0 = nothing but RSA on these cores).

Also printed: the CPU seconds of the daemon and of the sandbox over each job, and their
*non-RSA CPU per object*: the daemon's CPU less items x (D+E), the sandbox's less
items x D (measured CPU of one operation, thread time), over the objects written.
That is the Python (HTTP, JSON, watches, store, journal) that speeding up can cut;
a controller that tries other keys before the one that opens an item shows there too
(every failed OAEP decrypt costs a whole D).

Usage: ``python bench/reseal_fleet.py [--clusters 4] [--sealed-secrets 150]
[--rounds 2] [--profile DIR]``; the issue's figure: ``--clusters 20 --sealed-secrets
1000``.  ``--profile`` runs py-spy (``pip install py-spy``) on the daemon and on the
sandbox over each job, native frames included (RSA shows as OpenSSL's), and keeps the
collapsed stacks in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
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
    """The floors: OAEP-SHA256 decrypt + encrypt per item (the RSA ceiling), and
    decrypt + encrypt + decrypt (the system floor: the controller unseals each item)."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int) -> None:
        old, new = generate_sealing_key(bits=BITS), generate_sealing_key(bits=BITS)
        self._private, self._public = old.private_key, new.public_key
        self._new_private = new.private_key
        self._oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                  algorithm=hashes.SHA256(), label=b"team-1/app")
        self._part = old.public_key.encrypt(os.urandom(32), self._oaep)
        self._pool, self._threads = pool, threads
        self.rates: list[float] = []          # RSA ceiling, items/s
        self.system_rates: list[float] = []   # system floor, items/s
        self.decrypt_cpu: list[float] = []    # CPU seconds of one decrypt (thread time)
        self.encrypt_cpu: list[float] = []    # CPU seconds of one encrypt

    def _work(self, count: int, unseal: bool) -> tuple[int, float, float]:
        decrypt = encrypt = 0.0
        for _ in range(count):
            started = time.thread_time()
            plain = self._private.decrypt(self._part, self._oaep)
            opened = time.thread_time()
            sealed = self._public.encrypt(plain, self._oaep)
            decrypt, encrypt = decrypt + opened - started, encrypt + time.thread_time() - opened
            if unseal:     # what the controller spends on the item written
                self._new_private.decrypt(sealed, self._oaep)
        return count, decrypt, encrypt

    async def slice(self, items: int) -> None:
        """One slice of *items* of each floor (recorded)."""
        loop = asyncio.get_running_loop()
        per = max(items // self._threads, 1)
        for unseal, rates in ((False, self.rates), (True, self.system_rates)):
            started = time.perf_counter()
            parts = await asyncio.gather(*(loop.run_in_executor(
                self._pool, self._work, per, unseal) for _ in range(self._threads)))
            done = sum(count for count, _, _ in parts)
            rates.append(done / (time.perf_counter() - started))
            if not unseal:
                self.decrypt_cpu.append(sum(d for _, d, _ in parts) / done)
                self.encrypt_cpu.append(sum(e for _, _, e in parts) / done)


class Setup:
    """Wall and CPU seconds of each step before a job is timed (printed as it ends)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._at = (time.perf_counter(), time.process_time(), proc_cpu(pid))

    def phase(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time(), proc_cpu(self._pid))
        wall, cpu, sandbox = (b - a for a, b in zip(self._at, now, strict=True))
        print(f"  setup: {name}: {wall:6.1f} s wall, CPU daemon {cpu:6.1f} s, sandbox "
              f"{sandbox:6.1f} s", flush=True)
        self._at = now


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


@contextlib.contextmanager
def profiled(directory: Path | None, index: int, pids: dict[str, int]) -> Iterator[None]:
    """py-spy (``pip install py-spy``) on each process over one reseal job, when asked:
    collapsed stacks in *directory*/<name>-<round>.txt, native frames included."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spies = [subprocess.Popen([binary, "record", "--pid", str(pid), "--native", "--rate",
                               "50", "--format", "raw", "-o",
                               str(directory / f"{name}-{index + 1}.txt")],
                              stdout=subprocess.DEVNULL)
             for name, pid in pids.items()]
    time.sleep(1.0)    # attached before the job starts
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)


async def measure(state_dir: Path, pid: int, args: argparse.Namespace,
                  ) -> tuple[Floor, list[Round]]:
    threads = rsa_threads()
    objects = args.clusters * args.sealed_secrets
    rounds: list[Round] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="rsa") as pool:
        floor = Floor(pool, threads)
        mark = Setup(pid)
        async with daemon(state_dir, pool) as fleet:
            mark.phase("daemon's first pass (inventory, attribution)")
            for index in range(args.rounds):
                await fleet.run_job("key_sync" if index == 0 else "renewal", {})
                mark.phase("key_sync" if index == 0 else "renewal")
                items = await fleet.wait_planned(objects)
                mark.phase("until the plan holds every object")
                await floor.slice(args.slice)
                with profiled(args.profile, index, {"daemon": os.getpid(), "sandbox": pid}):
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
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy each process over each job into this directory")
    args = parser.parse_args()
    sandbox_args = ["--clusters", str(args.clusters), "--sealed-secrets",
                    str(args.sealed_secrets), "--namespaces", "5", "--keys", "1",
                    "--key-bits", str(BITS), "--seed", "1", "--controller-startup-delay", "0"]
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-reseal-") as tmp:
        state_dir = Path(tmp)
        started = time.perf_counter()
        with SandboxProcess(state_dir, sandbox_args, timeout=1800) as sandbox:
            print(f"  setup: sandbox seeded and serving: {time.perf_counter() - started:6.1f} s "
                  f"wall, CPU sandbox {proc_cpu(sandbox.pid):6.1f} s", flush=True)
            floor, rounds = asyncio.run(measure(state_dir, sandbox.pid, args))
    rates, system = floor.rates, floor.system_rates
    median, system_median = statistics.median(rates), statistics.median(system)
    decrypt, encrypt = statistics.median(floor.decrypt_cpu), statistics.median(floor.encrypt_cpu)
    print(f"reseal job: {args.clusters} clusters x {args.sealed_secrets} SealedSecrets, "
          f"RSA-{BITS}, {rsa_threads()} RSA threads, load {os.getloadavg()[0]:.1f}")
    print(f"  RSA ceiling (D+E per item)   {median:7.1f} items/s  median of {len(rates)} "
          f"slices, spread {min(rates):.1f} .. {max(rates):.1f}")
    print(f"  system floor (D+E+D per item) {system_median:6.1f} items/s  spread "
          f"{min(system):.1f} .. {max(system):.1f}; one D {decrypt * 1e3:.2f} ms, one E "
          f"{encrypt * 1e3:.2f} ms CPU: best possible ratio (D+E)/(2D+E) = "
          f"{(decrypt + encrypt) / (2 * decrypt + encrypt):.2f}")
    for index, measured in enumerate(rounds, 1):
        ratio = measured.rate / median
        print(f"  round {index}: {measured.items} items in {measured.objects} objects, "
              f"{measured.wall:6.2f} s wall  {measured.rate:7.1f} items/s  ratio "
              f"{ratio:4.2f} {'ok' if ratio >= TARGET_RATIO else 'BELOW TARGET'} "
              f"(target >= {TARGET_RATIO}); ratio to the system floor "
              f"{measured.rate / system_median:4.2f}")
        daemon_rsa, sandbox_rsa = measured.items * (decrypt + encrypt), measured.items * decrypt
        print(f"           CPU: daemon {measured.daemon_cpu:6.2f} s (RSA {daemon_rsa:5.2f} s, "
              f"non-RSA {(measured.daemon_cpu - daemon_rsa) / measured.objects * 1e3:5.2f} ms"
              f"/object), sandbox {measured.sandbox_cpu:6.2f} s (RSA {sandbox_rsa:5.2f} s, "
              f"non-RSA {(measured.sandbox_cpu - sandbox_rsa) / measured.objects * 1e3:5.2f} "
              f"ms/object)")

if __name__ == "__main__":
    main()
