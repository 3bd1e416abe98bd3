"""The daemon's RSA worker processes: attribution jobs run there, two in flight per worker.

See :mod:`sealfleet.adapters.rsa_worker` for why processes and for the protocol.  The
pool knows each worker's place in one list of keys, shared by all: before a job, a
worker is sent the keys it has not seen yet, and the job names its candidates by their
place in the list.  A worker starts when a job finds no running worker idle; a job
waits in a busy worker's pipe only when every worker has one.  One that dies (killed,
out of memory) is started again and the jobs it owed given to the new one; a job whose
second worker dies under it too fails with :class:`RsaWorkerError` (a transient error: the
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
import collections
import contextlib
import datetime as dt
import sys
from collections.abc import Collection, Sequence
from types import TracebackType

import structlog
from cryptography.hazmat.primitives import serialization

from sealfleet.adapters.rsa_worker import (
    READY_PAYLOAD,
    decode_payload,
    encode_frame,
    encode_order,
)
from sealfleet.domain.attribution import Candidate, JobAnswer, ObjectItems
from sealfleet.errors import TransientError

log = structlog.get_logger(__name__)

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sealfleet.adapters.rsa_worker")
_STOP_GRACE = 2.0   # seconds a worker gets to exit once its stdin is closed
PIPELINE_DEPTH = 2  # jobs written to a worker at once: one it does, one ready behind


class RsaWorkerError(TransientError):
    """An RSA job could not be done: its workers died, or one failed it."""


class _WorkerGone(Exception):
    """The worker's pipe closed with a job owed (the process died).  *under_job*: the
    job was the oldest owed, the one it was doing (or the first to reach a worker already
    dead), which counts against the job; a job behind it in the pipe had not started and
    is simply sent again."""

    def __init__(self, *, under_job: bool) -> None:
        super().__init__("an RSA worker died")
        self.under_job = under_job


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
    """One worker process (started with the pool or on first use, again after it died),
    how many of the pool's keys it holds, and the answers it owes, oldest first.

    Jobs are pipelined: a second job is written while the first runs, so the worker
    reads its next job the moment it answers instead of waiting for the event loop to
    read the answer and pick the next job (in a first pass at 1,000 clusters the loop,
    busy with everything else, left the workers idle an eighth of the time).  One
    reader per process takes the answers in the order the jobs were written."""

    def __init__(self, command: Sequence[str], number: int) -> None:
        self._command = command
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.synced = 0
        self.load = 0                   # jobs given to this slot and not yet answered
        self.deaths = 0                 # its workers that died (not stopped by us)
        self._owed: collections.deque[asyncio.Future[JobAnswer]] = collections.deque()
        self._starting = asyncio.Lock()  # two jobs on a stopped slot start one worker
        self.booted = asyncio.Event()    # its worker said it is ready (or died first)
        self._readers: set[asyncio.Task[None]] = set()

    async def started(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self.process is None:
                process = await asyncio.create_subprocess_exec(
                    *self._command, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE)
                self.process, self.synced = process, 0
                self.booted = booted = asyncio.Event()
                reader = asyncio.ensure_future(self._read_answers(process, booted))
                self._readers.add(reader)
                reader.add_done_callback(self._readers.discard)
                log.info("rsa_worker_started", worker=self.number, pid=process.pid)
            return self.process

    async def run(self, keys: Sequence[Candidate], job: bytes) -> JobAnswer:
        process = await self.started()
        if process.stdin is None:       # never: it is a pipe
            raise RsaWorkerError("an RSA worker has no pipes")
        answer: asyncio.Future[JobAnswer] = asyncio.get_running_loop().create_future()
        # A pipe whose worker died takes these writes silently: the reader finds the
        # death at its end of the pipes, and fails this job with the others owed.
        if self.synced < len(keys):
            fresh = [_key_entry(option) for option in keys[self.synced:]]
            process.stdin.write(encode_frame(("keys", fresh)))
            self.synced = len(keys)
        process.stdin.write(job)
        self._owed.append(answer)       # in the order written: the reader's order
        with contextlib.suppress(ConnectionError):  # a death is the reader's to report
            await process.stdin.drain()
        return await answer

    async def _read_answers(self, process: asyncio.subprocess.Process,
                            booted: asyncio.Event) -> None:
        """*booted* at its first frame (``ready``), then the answers of *process*, to
        the jobs owed in order, until its pipe closes: we stopped it (quiet), or it died
        (every job owed fails: the oldest, which it was doing, as the job it died under;
        the others go to the next worker)."""
        if process.stdout is None:      # never: it is a pipe
            return
        try:
            while True:
                size = int.from_bytes(await process.stdout.readexactly(4), "big")
                payload = await process.stdout.readexactly(size)
                if not booted.is_set():
                    booted.set()
                    if payload == READY_PAYLOAD:
                        continue
                if self._owed:
                    owed = self._owed.popleft()
                    if owed.done():     # its job was cancelled: the pool is stopping
                        continue
                    try:
                        message = decode_payload(payload)
                    except Exception:   # a garbled answer fails its job only
                        owed.set_exception(RsaWorkerError(
                            "an RSA worker sent an answer that cannot be read"))
                        continue
                    try:
                        owed.set_result(_answer(message))
                    except RsaWorkerError as error:
                        owed.set_exception(error)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            booted.set()                    # dead before it booted: nobody waits on
        if self.process is not process:     # stopped by us
            return
        self.process = None
        self.deaths += 1
        self._fail_owed(first_under_job=True)
        code = await _end(process, grace=0)
        log.warning("rsa_worker_died", worker=self.number, returncode=code)

    def _fail_owed(self, *, first_under_job: bool) -> None:
        owed_now, self._owed = list(self._owed), collections.deque()
        for place, owed in enumerate(owed_now):
            if not owed.done():
                owed.set_exception(_WorkerGone(under_job=first_under_job and place == 0))

    async def stop(self, *, grace: float = _STOP_GRACE) -> int | None:
        """End the worker: stdin closed (it exits), killed after *grace* seconds; the
        jobs it still owes fail (we stop only at the pool's end, or when a job was cut
        off and the pipe is out of step)."""
        process, self.process = self.process, None
        self._fail_owed(first_under_job=False)
        code = None if process is None else await _end(process, grace=grace)
        # Readers end at their pipe's end: this one's, or a dead worker's being reaped.
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code


async def _end(process: asyncio.subprocess.Process, *, grace: float) -> int:
    if process.stdin is not None:
        process.stdin.close()
    try:
        return await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


class RsaProcessPool:
    """*workers* RSA worker processes; :meth:`attribute` runs a job on the least busy one.

    An async context manager: *start* workers start on entering it (the daemon starts
    as many as its first pass can keep busy), leaving it ends every worker.  *command*
    starts a worker (tests start one that dies on cue)."""

    def __init__(self, workers: int, *, start: int = 1,
                 command: Sequence[str] = WORKER_COMMAND) -> None:
        self.size = max(1, workers)
        self._start = min(max(1, start), self.size)
        self._slots = [_Slot(command, number) for number in range(self.size)]
        self.depth = PIPELINE_DEPTH * self.size  # jobs in flight at most (FairShare's slots)
        self._free = asyncio.Semaphore(self.depth)
        self._keys: list[Candidate] = []        # every key sent to the workers, in order
        self._places: dict[str, int] = {}       # fingerprint -> place in _keys
        # The last ranking seen and its encoded order, extended as that list grows.
        self._ranking: Sequence[Candidate] = ()
        self._ranking_order = array.array("I")
        self._running: set[asyncio.Task[JobAnswer]] = set()
        self._closed = False

    async def __aenter__(self) -> RsaProcessPool:
        # *start* workers start with the pool: each boots (an interpreter and
        # cryptography, about 0.2 s of a core) while the daemon opens its store and its
        # API, instead of in the first pass, where for a small fleet a worker's boot was
        # a third of the pass.  The others start on the first job that finds no worker
        # idle.
        await asyncio.gather(*(slot.started() for slot in self._slots[:self._start]))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self._closed = True
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await asyncio.gather(*(slot.stop() for slot in self._slots))

    async def booted(self) -> None:
        """Until every worker started so far has booted (or died trying)."""
        await asyncio.gather(*(slot.booted.wait() for slot in self._slots
                               if slot.process is not None))

    @property
    def deaths(self) -> int:
        """Workers that died (killed, out of memory), not stopped by the pool."""
        return sum(slot.deaths for slot in self._slots)

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

    def _least_loaded(self) -> _Slot:
        """The slot with the fewest jobs, a running worker before one to start: a second
        worker starts only when jobs overlap (a daemon that attributes a few items runs
        one), and a job is queued behind another only when every worker has one."""
        return min(self._slots, key=lambda slot: (slot.load, slot.process is None))

    async def _run(self, job: bytes) -> JobAnswer:
        async with self._free:
            slot = self._least_loaded()
            slot.load += 1
            try:
                return await self._run_on(slot, job)
            except asyncio.CancelledError:
                await slot.stop(grace=0)    # cut off mid-exchange: its pipe is out of step
                raise
            finally:
                slot.load -= 1

    async def _run_on(self, slot: _Slot, job: bytes) -> JobAnswer:
        under, behind = 0, 0
        while True:
            if self._closed:    # a job sent again at a stop must not start a worker
                raise RsaWorkerError("the RSA workers are stopped")
            try:
                return await slot.run(self._keys, job)
            except _WorkerGone as gone:
                if gone.under_job:
                    under += 1
                else:
                    behind += 1
                # Twice under this job: it is the likely killer.  Behind other jobs it
                # is innocent, but a worker dying over and over must not loop either.
                if under >= 2 or under + behind >= 2 * PIPELINE_DEPTH:
                    raise RsaWorkerError("RSA workers died twice on one job") from None
