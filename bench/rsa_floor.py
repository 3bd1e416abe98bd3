"""The RSA floor of a scan, sampled throughout the measurement it is the floor of.

The irreducible cost of attributing an item is one RSA-OAEP decrypt.  What one decrypt
costs depends on what else the machine is doing (a shared machine's other load, SMT
siblings, frequency): a single probe before or after a scan measured 2.01 CPU-ms in one
run and 3.21 in another, which moved the scan's ratio from 0.82 to 1.99.  So a thread
decrypts one item every few tens of milliseconds *while* the measured work runs, timing
each decrypt in its own thread's CPU time (not inflated by waiting for a core), and the
floor is the median of those samples; their spread is printed with it.  The sampler's
own CPU (a few percent) is reported so callers can subtract it.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


@dataclass(frozen=True)
class Floor:
    """CPU seconds per decrypt: median and spread of the samples."""

    median: float
    p10: float
    p90: float
    samples: int
    sampler_cpu: float   # CPU seconds the sampling itself used

    def describe(self) -> str:
        return (f"{self.median * 1000:.2f} CPU-ms per decrypt (median of {self.samples} "
                f"samples taken throughout; p10 {self.p10 * 1000:.2f}, "
                f"p90 {self.p90 * 1000:.2f})")


@dataclass(frozen=True)
class FloorRun:
    """A run of the floor's decrypts: its wall seconds, and the share of the threads'
    time in it they ran (CPU over wall: alone on idle cores, about 1)."""

    wall: float
    ran: float


class RsaSampler:
    """``with RsaSampler(bits) as sampler: ...work...``; then ``sampler.floor()``."""

    def __init__(self, bits: int, *, interval: float = 0.04) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        label = b"bench/rsa-floor"
        self._padding = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                     algorithm=hashes.SHA256(), label=label)
        self._ciphertext = self._key.public_key().encrypt(b"k" * 32, self._padding)
        self._interval = interval
        self._samples: list[float] = []
        self._cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsa-floor", daemon=True)

    def __enter__(self) -> RsaSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.thread_time()
        while not self._stop.is_set():
            before = time.thread_time()
            self._key.decrypt(self._ciphertext, self._padding)
            self._samples.append(time.thread_time() - before)
            self._stop.wait(self._interval)
        self._cpu = time.thread_time() - started

    def mark(self) -> int:
        """A position in the samples, to take the floor of a part of the run."""
        return len(self._samples)

    def floor(self, start: int = 0, end: int | None = None) -> Floor:
        samples = sorted(self._samples[start:end]) or [float("nan")]
        deciles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
        return Floor(median=statistics.median(samples), p10=deciles[0], p90=deciles[-1],
                     samples=len(samples), sampler_cpu=self._cpu)

    def run_floor(self, count: int, threads: int) -> FloorRun:
        """*count* decrypts on *threads* threads, measured now: their wall seconds (the
        floor as this machine gives it at the moment, a shared machine's other load
        included, beside the ideal of the samples' CPU cost spread over every core) and
        the share of their time the threads ran."""
        per_thread = [count // threads + (1 if i < count % threads else 0)
                      for i in range(threads)]

        spent: list[tuple[float, float]] = []   # (CPU, wall) per thread

        def work(n: int) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(n):
                self._key.decrypt(self._ciphertext, self._padding)
            spent.append((time.thread_time() - cpu, time.perf_counter() - wall))

        workers = [threading.Thread(target=work, args=(n,)) for n in per_thread]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - started
        thread_wall = sum(w for _, w in spent)
        return FloorRun(wall, sum(c for c, _ in spent) / thread_wall if thread_wall else 1.0)

    @property
    def cpu_so_far(self) -> float:
        """CPU seconds of the sampler's decrypts so far (subtract from process CPU)."""
        return sum(self._samples)
