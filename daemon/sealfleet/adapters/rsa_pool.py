"""The daemon's RSA worker processes: attribution jobs run there, one job per worker.

See :mod:`sealfleet.adapters.rsa_worker` for why processes and for the protocol.  The
pool knows each worker's place in one list of keys, shared by all: before a job, a
worker is sent the keys it has not seen yet, and the job names its candidates by their
place in the list.  A worker starts when a job finds no running worker idle.  One that
dies (killed, out of memory) is started again and the job given to the new one; a job
whose second worker dies too fails with :class:`RsaWorkerError` (a transient error: the
cluster tries again later), so an input that kills workers cannot kill them in a loop.
A job whose caller goes away still runs to its answer, which keeps the worker's pipe in
step.

Written by hand: ``concurrent.futures.ProcessPoolExecutor`` cannot keep state in a
given worker (the keys: a fleet's thousands, loaded once per worker, not sent with
every job) and cannot be told which worker a job goes to.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Collection, Sequence
from types import TracebackType

import structlog
from cryptography.hazmat.primitives import serialization

from sealfleet.adapters.rsa_worker import decode_payload, encode_frame, encode_order
from sealfleet.domain.attribution import Candidate, JobAnswer, ObjectItems
from sealfleet.errors import TransientError

log = structlog.get_logger(__name__)

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sealfleet.adapters.rsa_worker")
_STOP_GRACE = 2.0   # seconds a worker gets to exit once its stdin is closed


class RsaWorkerError(TransientError):
    """An RSA job could not be done: its workers died, or one failed it."""


class _WorkerGone(Exception):
    """The worker's pipe closed under a job (the process died)."""


def _key_entry(option: Candidate) -> tuple[bytes, dt.datetime, dt.datetime]:
    der = option.key.private_key.private_bytes(serialization.Encoding.DER,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return der, option.key.not_before, option.key.not_after


def _answer(message: object) -> JobAnswer:
    match message:
        case ("done", list(fingerprints), int(attempts), float(cpu), float(busy)):
            return JobAnswer([f if isinstance(f, str) else None for f in fingerprints],
                             attempts, cpu, busy)
        case ("failed", str(reason)):
            raise RsaWorkerError(f"an RSA worker failed a job: {reason}")
        case _:
            raise RsaWorkerError("an RSA worker sent an answer of the wrong shape")


class _Slot:
    """One worker process (started with the pool or on first use, again after it died)
    and how many of the pool's keys it holds."""

    def __init__(self, command: Sequence[str], number: int) -> None:
        self._command = command
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.synced = 0

    async def started(self) -> asyncio.subprocess.Process:
        if self.process is None:
            self.process = await asyncio.create_subprocess_exec(
                *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.synced = 0
            log.info("rsa_worker_started", worker=self.number, pid=self.process.pid)
        return self.process

    async def run(self, keys: Sequence[Candidate], job: bytes) -> JobAnswer:
        process = await self.started()
        if process.stdin is None or process.stdout is None:  # never: both are pipes
            raise RsaWorkerError("an RSA worker has no pipes")
        try:
            if self.synced < len(keys):
                fresh = [_key_entry(option) for option in keys[self.synced:]]
                process.stdin.write(encode_frame(("keys", fresh)))
                self.synced = len(keys)
            process.stdin.write(job)
            await process.stdin.drain()
            size = int.from_bytes(await process.stdout.readexactly(4), "big")
            payload = await process.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise _WorkerGone from error
        return _answer(decode_payload(payload))

    async def stop(self, *, grace: float = _STOP_GRACE) -> int | None:
        """End the worker: stdin closed (it exits), killed after *grace* seconds."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.stdin is not None:
            process.stdin.close()
        try:
            return await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()


class RsaProcessPool:
    """*workers* RSA worker processes; :meth:`attribute` runs one job on an idle one.

    An async context manager: leaving it ends every worker.  *command* starts a worker
    (tests start one that dies on cue)."""

    def __init__(self, workers: int, *, command: Sequence[str] = WORKER_COMMAND) -> None:
        self.size = max(1, workers)
        self._slots = [_Slot(command, number) for number in range(self.size)]
        self._idle = list(self._slots)
        self._free = asyncio.Semaphore(self.size)
        self._keys: list[Candidate] = []        # every key sent to the workers, in order
        self._places: dict[str, int] = {}       # fingerprint -> place in _keys
        # The last ranking seen and its encoded order, extended as that list grows.
        self._ranking: Sequence[Candidate] = ()
        self._ranking_order = array.array("I")
        self._running: set[asyncio.Task[JobAnswer]] = set()
        self.deaths = 0                         # workers that died under a job
        self._closed = False

    async def __aenter__(self) -> RsaProcessPool:
        # One worker starts with the pool: it boots (an interpreter and cryptography,
        # about 0.2 s) while the daemon opens its store and its API, instead of in the
        # first pass, where for a small fleet it was a third of the pass.  The others
        # start on the first job that finds no worker idle.
        await self._slots[0].started()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self._closed = True
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await asyncio.gather(*(slot.stop() for slot in self._slots))

    @property
    def pids(self) -> list[int]:
        """The workers running now (benchmarks add their CPU and memory)."""
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    def _place(self, option: Candidate) -> int:
        place = self._places.get(option.fingerprint)
        if place is None:
            place = self._places[option.fingerprint] = len(self._keys)
            self._keys.append(option)
        return place

    def _ranking_places(self, ranking: Sequence[Candidate]) -> array.array[int]:
        """*ranking*'s places, encoded once per list: the attributor hands the same list
        (every key of the fleet) to every job until it ranks the keys again, and only
        appends to it meanwhile.  Placing thousands of keys for every job of every
        cluster was a tenth of the event loop's first pass at 1,000 clusters."""
        if ranking is not self._ranking or len(ranking) < len(self._ranking_order):
            self._ranking, self._ranking_order = ranking, array.array("I")
        for option in ranking[len(self._ranking_order):]:
            self._ranking_order.append(self._place(option))
        return self._ranking_order

    async def attribute(self, objects: Sequence[ObjectItems], candidates: Sequence[Candidate],
                        local: Collection[str], ranking: Sequence[Candidate] = ()) -> JobAnswer:
        """Attribute *objects*, trying *candidates* then *ranking* in order (see
        :func:`attribution.attribute_objects`), on the next idle worker."""
        if self._closed:    # a late job at a stop must not start a worker again
            raise RsaWorkerError("the RSA workers are stopped")
        order = (encode_order([self._place(option) for option in candidates])
                 + self._ranking_places(ranking).tobytes())
        job = encode_frame(("job", list(objects), order, frozenset(local)))
        task = asyncio.ensure_future(self._run(job))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Shielded: a caller cancelled mid-job leaves the answer to be read, so the
        # worker's pipe stays in step for the next job.
        return await asyncio.shield(task)

    def _take_idle(self) -> _Slot:
        """An idle worker, one already running if there is one: a second worker starts
        only when jobs overlap (a daemon that attributes a few items runs one)."""
        slot = next((s for s in self._idle if s.process is not None), self._idle[0])
        self._idle.remove(slot)
        return slot

    async def _run(self, job: bytes) -> JobAnswer:
        await self._free.acquire()
        slot = self._take_idle()
        try:
            for _ in range(2):
                try:
                    return await slot.run(self._keys, job)
                except _WorkerGone:
                    code = await slot.stop(grace=0)
                    self.deaths += 1
                    log.warning("rsa_worker_died", worker=slot.number, returncode=code)
            raise RsaWorkerError("RSA workers died twice on one job")
        except asyncio.CancelledError:
            await slot.stop(grace=0)    # cut off mid-exchange: its pipe is out of step
            raise
        finally:
            self._idle.append(slot)
            self._free.release()
