"""An RSA worker process: attribution's decrypts, off the daemon's interpreter.

Why a process: ``cryptography`` lets go of the GIL while it decrypts, but takes it back
when each decrypt returns, and in the daemon the event loop holds it most of the time;
a decrypt on a thread took 9.5 times its own time with the loop busy (``bench/gil.py``),
and in a first pass the RSA threads ran only about half the time they held a job.  A
worker has an interpreter of its own, so its decrypts wait for nothing but a core.

The protocol, on the worker's stdin and stdout (``python -m sealfleet.adapters.rsa_worker``):
frames of a 4-byte big-endian length and a pickle, both ends this module (see
:func:`write_frame`).  The parent sends

- ``("keys", [(pkcs8_der, not_before, not_after), ...])``: keys to append to the
  worker's list, in the parent's order (a job names keys by their place in that list,
  so a fleet's thousands of keys cross the pipe once per worker, not once per job);
- ``("job", [ObjectItems, ...], order, local)``: *order* the indices of the candidate
  keys, likeliest first, as 4-byte unsigned integers; *local* the fingerprints of the
  cluster's own keys (:func:`attribution.attribute_objects`);

and the worker answers each job with ``("done", fingerprints, attempts, cpu_s, wall_s)``
or ``("failed", exception class name)``, after a first frame of its own, ``("ready",)``,
once it has booted (its imports done: the daemon starts its first pass then).  Keys
travel over the pipe only: never argv, the environment or a file.  The worker ends when
its stdin closes (the daemon stopped, or died: a worker never outlives it for long) or
when a frame cannot be read.
"""

from __future__ import annotations

import array
import contextlib
import datetime as dt
import os
import pickle
import signal
import sys
import time
from collections.abc import Collection, Sequence
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key

from sealfleet.domain.attribution import (
    Candidate,
    JobAnswer,
    ObjectItems,
    attribute_objects,
    candidate,
)
from sealfleet.domain.keys import Certificate, SealingKey

_HEADER = 4

# A worker runs at a lower CPU priority than the daemon.  Its jobs are batch work with a
# queue behind them; the event loop is what feeds that queue, answers the API and pings
# the watchdog.  At equal priority two busy workers and the loop share the cores evenly,
# so the loop, the one serial resource, got about half a core in a first pass and the
# workers then waited for jobs it had not yet read.  Niceness only ever goes up without
# privileges, so this works under the hardened unit too.
NICENESS = 10


def encode_frame(message: object) -> bytes:
    """One frame: length, then the pickled *message* (the reader is this module too:
    both ends are the same code, run by the same interpreter, so pickle is safe here and
    the quickest way across for the datetimes and dataclasses of a job)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(_HEADER, "big") + payload


# A worker's first frame, once it has booted; the reader knows it by its payload.
READY_FRAME = encode_frame(("ready",))
READY_PAYLOAD = READY_FRAME[_HEADER:]


def decode_payload(payload: bytes) -> object:
    return pickle.loads(payload)  # noqa: S301 - our own pipe, see encode_frame


def encode_order(indices: Sequence[int]) -> bytes:
    return array.array("I", indices).tobytes()


def decode_order(raw: bytes) -> list[int]:
    order = array.array("I")
    order.frombytes(raw)
    return order.tolist()


def run_job(objects: Sequence[ObjectItems], candidates: Sequence[Candidate],
             local: Collection[str]) -> JobAnswer:
    """One RSA job, timed where it runs (this thread's CPU and wall time): what a worker
    does with a job message, and what the attributor runs on a thread without workers."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    fingerprints, attempts = attribute_objects(objects, candidates, local)
    return JobAnswer(fingerprints, attempts, time.thread_time() - cpu_started,
                     time.perf_counter() - started)


def _read_frame(stream: BinaryIO) -> object | None:
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None
    size = int.from_bytes(header, "big")
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decode_payload(payload)


def _load_key(der: bytes, not_before: dt.datetime, not_after: dt.datetime) -> Candidate:
    # The parent loaded and checked this key already: checking it again here would cost
    # milliseconds per key for every worker that starts.
    private_key = load_der_private_key(der, password=None,
                                       unsafe_skip_rsa_key_validation=True)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError("not an RSA key")
    certificate = Certificate(public_key=private_key.public_key(),
                              not_before=not_before, not_after=not_after, pem=b"")
    return candidate(SealingKey(private_key, certificate))


class _Worker:
    def __init__(self) -> None:
        self.keys: list[Candidate] = []

    def handle(self, message: object) -> tuple[object, ...] | None:
        """The answer to *message* (None for a keys message, which has none)."""
        match message:
            case ("keys", list(entries)):
                for entry in entries:
                    match entry:
                        case (bytes(der), dt.datetime() as not_before,
                              dt.datetime() as not_after):
                            self.keys.append(_load_key(der, not_before, not_after))
                        case _:
                            raise TypeError("malformed key entry")
                return None
            case ("job", list(objects), bytes(order), frozenset(local)):
                try:
                    candidates = [self.keys[index] for index in decode_order(order)]
                    if not all(isinstance(o, ObjectItems) for o in objects):
                        raise TypeError("a job holds something else than ObjectItems")
                    answer = run_job(objects, candidates, local)
                except Exception as error:  # the class only: a message could quote input
                    return ("failed", type(error).__name__)
                return ("done", answer.fingerprints, answer.attempts, answer.cpu_seconds,
                        answer.busy_seconds)
            case _:
                return ("failed", "unknown message")


def main() -> None:
    # The daemon decides when a worker ends: systemd's stop sends SIGTERM to every process
    # of the unit and a terminal's Ctrl-C SIGINT to the whole process group, and a worker
    # gone first would only be started again while the daemon finishes its jobs.  The
    # worker ends when its stdin closes (the daemon stopped or died), or at SIGKILL.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # a sandbox that forbids it: run at the parent's
        os.nice(NICENESS)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    # stdout carries frames only: anything printed by mistake goes to stderr instead.
    sys.stdout = sys.stderr
    worker = _Worker()
    sink.write(READY_FRAME)
    sink.flush()
    while (message := _read_frame(source)) is not None:
        answer = worker.handle(message)
        del message     # a keys message: its DER bytes go now, not at the next frame
        if answer is not None:
            sink.write(encode_frame(answer))
            sink.flush()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # the daemon went away mid-answer
        main()
