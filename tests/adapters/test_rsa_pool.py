"""The RSA worker processes: right answers, keys sent once, workers that die replaced,
a cancelled caller that leaves the pipe in step, and no worker outliving the daemon."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sealfleet.adapters.rsa_pool import WORKER_COMMAND, RsaProcessPool, RsaWorkerError
from sealfleet.adapters.rsa_worker import NICENESS
from sealfleet.domain.attribution import ObjectItems, candidate
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import SealedIdentity, seal_value


def sealed(key: SealingKey, name: str, count: int) -> ObjectItems:
    identity = SealedIdentity(namespace="apps", name=name, scope=Scope.STRICT)
    return ObjectItems(tuple((seal_value(key.public_key, f"v{index}".encode(), identity),
                              identity.label) for index in range(count)))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_answers_come_back_in_order_and_keys_named_later_are_sent_then(
        rsa2048_keys: list[SealingKey]) -> None:
    first, second, foreign = rsa2048_keys
    async with RsaProcessPool(1) as pool:
        one = await pool.attribute([sealed(first, "a", 2)], [candidate(first)], ())
        assert one.fingerprints == [first.fingerprint] * 2
        assert one.attempts == 2
        assert one.busy_seconds >= one.cpu_seconds > 0
        # The second key is new to the worker; the first it holds already.
        two = await pool.attribute([sealed(second, "b", 1), sealed(foreign, "c", 1),
                                    sealed(first, "d", 1)],
                                   [candidate(second), candidate(first)], ())
        assert two.fingerprints == [second.fingerprint, None, first.fingerprint]
        assert pool.deaths == 0


async def test_a_worker_killed_between_jobs_is_replaced_and_given_every_key_again(
        rsa2048_keys: list[SealingKey]) -> None:
    first, second, _ = rsa2048_keys
    async with RsaProcessPool(1) as pool:
        await pool.attribute([sealed(first, "a", 1)], [candidate(first), candidate(second)], ())
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)
        # Names the second key only: the new worker must have been sent the whole list.
        answer = await pool.attribute([sealed(second, "b", 1)], [candidate(second)], ())
        assert answer.fingerprints == [second.fingerprint]
        assert pool.deaths == 1
        assert pool.pids != [pid]


async def test_sigterm_and_sigint_leave_a_worker_to_the_daemon(
        rsa2048_keys: list[SealingKey]) -> None:
    """systemd's stop signals every process of the unit, Ctrl-C the whole process group:
    the workers stay until the daemon, stopping, closes their pipes."""
    key = rsa2048_keys[0]
    async with RsaProcessPool(1) as pool:
        await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        (pid,) = pool.pids
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        await asyncio.sleep(0.2)
        answer = await pool.attribute([sealed(key, "b", 1)], [candidate(key)], ())
        assert answer.fingerprints == [key.fingerprint]
        assert pool.pids == [pid]
        assert pool.deaths == 0
    assert not alive(pid)


async def test_a_worker_dying_under_a_job_is_replaced_and_the_job_done(
        tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    flag = tmp_path / "die-once"
    flag.touch()
    # Dies on the first frame it gets while the flag exists (removing it), then
    # a worker started again is the real one.
    command = (sys.executable, "-c", textwrap.dedent("""
        import os, sys
        if os.path.exists(sys.argv[1]):
            os.remove(sys.argv[1])
            sys.stdin.buffer.read(4)
            os._exit(7)
        from sealfleet.adapters.rsa_worker import main
        main()
        """), str(flag))
    key = rsa2048_keys[0]
    async with RsaProcessPool(1, command=command) as pool:
        answer = await pool.attribute([sealed(key, "a", 2)], [candidate(key)], ())
        assert answer.fingerprints == [key.fingerprint] * 2
        assert pool.deaths == 1


async def test_a_job_that_kills_its_worker_twice_fails_and_the_next_job_still_runs(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    async with RsaProcessPool(1, command=(sys.executable, "-c", "import os; os._exit(7)")) \
            as pool:
        with pytest.raises(RsaWorkerError, match="died twice"):
            await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        assert pool.deaths == 2
        assert pool.pids == []
        with pytest.raises(RsaWorkerError):   # not stuck: the slot is free again
            await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())


async def test_a_caller_cancelled_mid_job_leaves_the_worker_in_step(
        rsa2048_keys: list[SealingKey]) -> None:
    mine, wrong, foreign = rsa2048_keys
    async with RsaProcessPool(1) as pool:
        # Every item tried with two keys that do not open it: a job of a few tenths of a second.
        slow = asyncio.create_task(pool.attribute([sealed(foreign, f"s{i}", 50) for i in range(6)],
                                                  [candidate(wrong), candidate(mine)], ()))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        (pid,) = pool.pids
        answer = await pool.attribute([sealed(mine, "m", 1)], [candidate(mine)], ())
        assert answer.fingerprints == [mine.fingerprint]
        assert pool.pids == [pid]
        assert pool.deaths == 0


async def test_leaving_the_pool_ends_its_workers(rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    async with RsaProcessPool(2) as pool:
        await asyncio.gather(*(pool.attribute([sealed(key, f"a{i}", 1)], [candidate(key)], ())
                               for i in range(4)))
        pids = pool.pids
    assert pids
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RsaWorkerError, match="stopped"):   # and starts none again
        await pool.attribute([sealed(key, "late", 1)], [candidate(key)], ())
    assert pool.pids == []


def test_workers_do_not_outlive_a_daemon_killed_with_sigkill() -> None:
    """kill -9 of the daemon: each worker's stdin closes and it exits by itself."""
    script = textwrap.dedent("""
        import asyncio, os, signal
        from sealfleet.adapters.rsa_pool import RsaProcessPool

        async def main():
            async with RsaProcessPool(2) as pool:
                await asyncio.gather(pool.attribute([], [], ()), pool.attribute([], [], ()))
                print("PIDS", *pool.pids, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PIDS ")]
    pids = [int(pid) for pid in line.split()[1:]]
    assert len(pids) >= 1
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def started_from(pid: int) -> tuple[bytes, bytes]:
    return (Path(f"/proc/{pid}/cmdline").read_bytes(),
            Path(f"/proc/{pid}/environ").read_bytes())


async def test_keys_never_travel_in_a_workers_command_line_or_environment(
        rsa2048_keys: list[SealingKey]) -> None:
    assert (sys.executable, "-m", "sealfleet.adapters.rsa_worker") == WORKER_COMMAND
    key = rsa2048_keys[0]
    async with RsaProcessPool(1) as pool:
        await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        seen = [started_from(pid) for pid in pool.pids]
    assert seen
    der = key.private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    for cmdline, environ in seen:
        for form in (der, base64.b64encode(der), key.private_key_pem()):
            assert form not in cmdline + environ
        assert cmdline.split(b"\0")[1:3] == [b"-m", b"sealfleet.adapters.rsa_worker"]


async def test_workers_run_at_a_lower_cpu_priority_than_the_daemon(
        rsa2048_keys: list[SealingKey]) -> None:
    """The event loop feeds the workers and answers the API: under load it must win the
    core, so the worker lowers its own priority (a job done proves it has started)."""
    key = rsa2048_keys[0]
    async with RsaProcessPool(1) as pool:
        await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        (pid,) = pool.pids
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(mine + NICENESS, 19)


async def test_a_ranking_that_grows_or_is_replaced_between_jobs_is_followed(
        rsa2048_keys: list[SealingKey]) -> None:
    """The pool encodes the fleet's ranking once per list and extends it as the list
    grows: a key appended later, and a list ranked anew, are tried all the same."""
    first, second, third = rsa2048_keys
    ranking = [candidate(first)]
    async with RsaProcessPool(1) as pool:
        one = await pool.attribute([sealed(first, "a", 1), sealed(second, "b", 1)], [], (),
                                   ranking)
        assert one.fingerprints == [first.fingerprint, None]
        ranking.append(candidate(second))
        two = await pool.attribute([sealed(second, "c", 1)], [], (), ranking)
        assert two.fingerprints == [second.fingerprint]
        ranked_again = [candidate(third), candidate(second)]
        three = await pool.attribute([sealed(third, "d", 1), sealed(first, "e", 1)],
                                     [candidate(first)], (), ranked_again)
        assert three.fingerprints == [third.fingerprint, first.fingerprint]
        # d: first (the lead) then third, unless first's modulus rules it out untried;
        # e: first, at once.
        assert three.attempts in (2, 3)


async def test_one_worker_starts_with_the_pool_and_a_second_only_when_jobs_overlap(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    async with RsaProcessPool(2) as pool:
        (booted,) = pool.pids                     # before any job
        assert alive(booted)
        await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        assert pool.pids == [booted]              # one job at a time: the same worker
        await asyncio.gather(*(pool.attribute([sealed(key, name, 3)], [candidate(key)], ())
                               for name in ("b", "c")))
        assert len(pool.pids) == 2


# A worker that dies on a job holding a SealedSecret named "kill", and is real otherwise.
KILLER_ON_CUE = (sys.executable, "-c", textwrap.dedent("""
    import os
    from sealfleet.adapters import rsa_worker
    real = rsa_worker.run_job
    def run_job(objects, candidates, local):
        if any(b"/kill" in label for o in objects for _, label in o.items):
            os._exit(7)
        return real(objects, candidates, local)
    rsa_worker.run_job = run_job
    rsa_worker.main()
    """))


async def test_jobs_beyond_the_workers_wait_in_their_pipes_and_come_back_in_order(
        rsa2048_keys: list[SealingKey]) -> None:
    """One worker, four jobs at once: two are written to it (one runs, one waits in the
    pipe so the worker never waits for the event loop), each gets its own answer."""
    first, second, _ = rsa2048_keys
    async with RsaProcessPool(1) as pool:
        assert pool.depth == 2
        keys = [first, second, first, second]
        answers = await asyncio.gather(*(
            pool.attribute([sealed(key, f"o{i}", i + 1)], [candidate(key)], ())
            for i, key in enumerate(keys)))
        assert [a.fingerprints for a in answers] == [[key.fingerprint] * (i + 1)
                                                     for i, key in enumerate(keys)]
        assert len(pool.pids) == 1
        assert pool.deaths == 0


async def test_a_worker_dying_under_one_job_fails_that_job_and_the_one_behind_it_is_done(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    async with RsaProcessPool(1, command=KILLER_ON_CUE) as pool:
        killer = asyncio.create_task(pool.attribute([sealed(key, "kill", 1)],
                                                    [candidate(key)], ()))
        behind = asyncio.create_task(pool.attribute([sealed(key, "fine", 2)],
                                                    [candidate(key)], ()))
        with pytest.raises(RsaWorkerError, match="died twice"):
            await killer
        assert (await behind).fingerprints == [key.fingerprint] * 2
        # The killer's two workers died; the job behind it cost none of its own.
        assert pool.deaths == 2
        answer = await pool.attribute([sealed(key, "after", 1)], [candidate(key)], ())
        assert answer.fingerprints == [key.fingerprint]


async def test_the_workers_asked_for_start_with_the_pool(
        rsa2048_keys: list[SealingKey]) -> None:
    """The daemon boots as many workers as its first pass keeps busy before it starts,
    so no worker's boot lands in the pass; more than it has are never started."""
    key = rsa2048_keys[0]
    async with RsaProcessPool(2, start=5) as pool:
        booted = pool.pids
        assert len(booted) == 2
        assert all(alive(pid) for pid in booted)
        await asyncio.gather(*(pool.attribute([sealed(key, name, 2)], [candidate(key)], ())
                               for name in ("a", "b", "c")))
        assert sorted(pool.pids) == sorted(booted)


async def test_leaving_the_pool_with_jobs_in_every_pipe_ends_them_and_its_workers(
        rsa2048_keys: list[SealingKey]) -> None:
    mine, wrong, foreign = rsa2048_keys
    async with RsaProcessPool(1) as pool:
        # Each job tries both keys on 120 items (about 70 ms); the third waits behind
        # the two in the pipe, so it is owed whatever a loaded machine does meanwhile.
        jobs = [asyncio.create_task(pool.attribute(
            [sealed(foreign, f"s{i}-{n}", 30) for n in range(4)],
            [candidate(wrong), candidate(mine)], ())) for i in range(3)]
        await pool.booted()
        (pid,) = pool.pids
        owed = [job for job in jobs if not job.done()]
    assert jobs[-1] in owed
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError | RsaWorkerError)
               for job, outcome in zip(jobs, outcomes, strict=True) if job in owed)
    assert not alive(pid)
    assert pool.pids == []
    assert pool.deaths == 0


async def test_a_garbled_answer_fails_its_job_and_the_next_job_is_answered(
        rsa2048_keys: list[SealingKey]) -> None:
    """A frame that is not a pickle (framing still in step) fails the job it answers;
    the worker's next answer goes to the next job."""
    key = rsa2048_keys[0]
    command = (sys.executable, "-c", textwrap.dedent("""
        import sys
        from sealfleet.adapters import rsa_worker
        real = rsa_worker._Worker.handle
        garbled = [True]
        def handle(self, message):
            answer = real(self, message)
            if answer is not None and garbled:
                garbled.pop()
                sys.__stdout__.buffer.write((5).to_bytes(4, "big") + b"junk!")
                sys.__stdout__.buffer.flush()
                return None
            return answer
        rsa_worker._Worker.handle = handle
        rsa_worker.main()
        """))
    async with RsaProcessPool(1, command=command) as pool:
        with pytest.raises(RsaWorkerError, match="cannot be read"):
            await pool.attribute([sealed(key, "a", 1)], [candidate(key)], ())
        answer = await pool.attribute([sealed(key, "b", 1)], [candidate(key)], ())
        assert answer.fingerprints == [key.fingerprint]
        assert pool.deaths == 0


async def test_the_pool_says_when_its_workers_have_booted() -> None:
    """Each worker's first frame says it is ready; ``booted`` waits for every worker
    started, and a worker that dies before it is ready does not leave it waiting."""
    async with RsaProcessPool(2, start=2) as pool:
        await asyncio.wait_for(pool.booted(), 60)   # a guard against a hang, no measure
        assert len(pool.pids) == 2
    silent = (sys.executable, "-c", "import time; time.sleep(60)")
    async with RsaProcessPool(1, command=silent) as pool:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.booted(), 0.5)
    dying = (sys.executable, "-c", "raise SystemExit(3)")
    async with RsaProcessPool(1, command=dying) as pool:
        await asyncio.wait_for(pool.booted(), 60)
        assert pool.deaths == 1


async def test_a_booted_worker_answers_its_first_job(rsa2048_keys: list[SealingKey]) -> None:
    """The ready frame is not taken for the first job's answer."""
    key = rsa2048_keys[0]
    async with RsaProcessPool(1) as pool:
        await pool.booted()
        answer = await pool.attribute([sealed(key, "first", 2)], [candidate(key)], ())
    assert answer.fingerprints == [key.fingerprint, key.fingerprint]
