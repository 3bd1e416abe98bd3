"""What a busy event-loop thread costs the RSA threads: a decrypt's wall time on a thread,
alone and while another thread runs Python, against its CPU time, in the same run; and
the same decrypt in the daemon's RSA worker process while the main thread is busy.

    python bench/gil.py [--decrypts 400] [--bits 2048]

``cryptography`` releases the GIL while it computes, so RSA threads scale across cores,
but every decrypt takes the GIL back when it returns.  While another thread runs Python
(the daemon's event loop during a first pass: TLS, JSON, bookkeeping), that thread gives
the GIL up only at its next blocking call or when the switch interval
(``sys.setswitchinterval``, 5 ms by default) runs out, so a decrypt of a fraction of a
millisecond can cost the RSA thread up to the whole interval.  This prints, for the
default interval and for 1 ms, the decrypt's wall and CPU time on a worker thread with
the main thread idle (the baseline) and with it busy in Python, and the ratio.  It
explains ``sealfleet_rsa_busy_seconds_total`` running far above
``sealfleet_rsa_cpu_seconds_total`` in a daemon whose loop is busy
(``bench/fleet.py`` prints both for a first pass), and why the daemon's attribution runs
in worker processes (:mod:`sealfleet.adapters.rsa_pool`): the last line times decrypts
inside a worker, one job of ``--decrypts`` items, with the main thread busy alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.domain.attribution import JobAnswer, ObjectItems, candidate
from sealfleet.domain.keys import generate_sealing_key
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import SealedIdentity, seal_value


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                        label=b"namespace/name")


def _decrypts_on_a_thread(key: rsa.RSAPrivateKey, ciphertext: bytes, count: int, *,
                          busy_main: bool) -> tuple[float, float]:
    """(wall, CPU) seconds per decrypt on a worker thread; the main thread meanwhile
    sleeps in short steps (idle) or runs pure Python (busy)."""
    result: list[tuple[float, float]] = []

    def work() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(count):
            key.decrypt(ciphertext, _oaep())
        result.append(((time.perf_counter() - wall) / count,
                       (time.thread_time() - cpu) / count))

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        if busy_main:
            sum(range(2000))  # about 20 us of Python, again and again
        else:
            time.sleep(0.001)
    thread.join()
    return result[0]


def _decrypts_in_a_worker(bits: int, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per decrypt inside an RSA worker process, as the worker
    times its job, while this process's main thread runs pure Python."""
    key = generate_sealing_key(bits=bits)
    identity = SealedIdentity(namespace="apps", name="gil", scope=Scope.STRICT)
    items = tuple((seal_value(key.public_key, b"v", identity), identity.label)
                  for _ in range(count))
    result: list[JobAnswer] = []

    async def job() -> None:
        async with RsaProcessPool(1) as pool:
            await pool.attribute([ObjectItems(items[:1])], [candidate(key)], ())  # started
            result.append(await pool.attribute([ObjectItems(items)], [candidate(key)], ()))

    thread = threading.Thread(target=lambda: asyncio.run(job()))
    thread.start()
    while thread.is_alive():
        sum(range(2000))
    thread.join()
    answer = result[0]
    return answer.busy_seconds / answer.attempts, answer.cpu_seconds / answer.attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decrypts", type=int, default=400)
    parser.add_argument("--bits", type=int, default=2048)
    args = parser.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    ciphertext = key.public_key().encrypt(b"\0" * 32, _oaep())
    default = sys.getswitchinterval()
    print(f"RSA-OAEP-{args.bits} decrypt on a worker thread, {args.decrypts} per case")
    try:
        for interval in (default, 0.001):
            sys.setswitchinterval(interval)
            idle_wall, idle_cpu = _decrypts_on_a_thread(key, ciphertext, args.decrypts,
                                                        busy_main=False)
            busy_wall, busy_cpu = _decrypts_on_a_thread(key, ciphertext, args.decrypts,
                                                        busy_main=True)
            print(f"switch interval {interval * 1000:.0f} ms: main thread idle (baseline) "
                  f"{idle_wall * 1e6:.0f} us wall, {idle_cpu * 1e6:.0f} us CPU; main thread "
                  f"busy in Python {busy_wall * 1e6:.0f} us wall, {busy_cpu * 1e6:.0f} us "
                  f"CPU: wall ratio {busy_wall / idle_wall:.1f}")
    finally:
        sys.setswitchinterval(default)
    worker_wall, worker_cpu = _decrypts_in_a_worker(args.bits, args.decrypts)
    print(f"in an RSA worker process, main thread busy in Python: {worker_wall * 1e6:.0f} us "
          f"wall, {worker_cpu * 1e6:.0f} us CPU per decrypt: wall ratio "
          f"{worker_wall / idle_wall:.1f} to the idle-thread baseline above")


if __name__ == "__main__":
    main()
