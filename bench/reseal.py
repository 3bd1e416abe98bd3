"""Reseal benchmark: the reseal engine, and a Git reseal, against the raw RSA ceiling.

    python bench/reseal.py [--secrets 400] [--pairs 5] [--files 5000] [--skip-git]

Resealing an item costs one RSA-OAEP-4096 decrypt (of the session key) and one
encrypt (of a new one); everything else is overhead.  So every figure is printed
next to the *raw reseal ceiling* measured in the same run: exactly that RSA pair per
item with ``cryptography`` alone, on a thread pool sized to the CPUs (RSA releases the
GIL).

1. Engine: plan (``domain.planning.resealing``) over inventory records, reseal every
   planned SealedSecret on the same pool (``domain.resealing``), serialise each new
   object as the JSON a cluster write sends.  Measured in slices alternating with the
   ceiling (a shared, noisy machine sees the same load in both); the median of the
   per-pair ratios is reported.  Target >= 0.9.
2. Git: a repository of ``--files`` SealedSecret files (1-5 items each, as the sandbox
   seeds them) behind a local bare remote; plan, fetch, worktree, read, reseal and
   splice every file, write and stage (overlapping the RSA work), one commit (push and
   worktree removal reported apart).  Its items/s against the ceiling measured right
   before and after.  Target >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from sealfleet.adapters.git import cli, writing
from sealfleet.domain import hybrid, keys, resealing, sealed_secrets
from sealfleet.domain.planning import resealing as planning
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

ITEM_NAMES = ("password", "username", "token", "api-key", "database-url")
JOB = "0123456789abcdef0123456789abcdef"


def make_secrets(old: keys.SealingKey, count: int, rng: random.Random) -> list[dict[str, Any]]:
    scopes = list(Scope)
    out = []
    for i in range(count):
        data = {name: base64.b64encode(rng.randbytes(rng.randint(8, 64))).decode()
                for name in rng.sample(ITEM_NAMES, rng.randint(1, 5))}
        secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": f"app-{i}", "namespace": f"team-{i % 20}",
                               "labels": {"app": f"app-{i}"}}, "data": data}
        out.append(sealed_secrets.seal_secret(secret, old.public_key, scope=scopes[i % 3]))
    return out


def raw_ceiling(docs: Sequence[dict[str, Any]], old: keys.SealingKey, new: keys.SealingKey,
                pool: ThreadPoolExecutor, threads: int) -> Callable[[], int]:
    """One OAEP decrypt plus one OAEP encrypt per item, padding built once, nothing else."""
    pairs = []
    for doc in docs:
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                            label=sealed_secrets.identity_of(doc).label or None)
        for value in doc["spec"]["encryptedData"].values():
            pairs.append((hybrid.split(base64.b64decode(value))[0], oaep))
    private, public = old.private_key, new.public_key

    def work(chunk: Sequence[tuple[bytes, padding.OAEP]]) -> int:
        for rsa_part, oaep in chunk:
            public.encrypt(private.decrypt(rsa_part, oaep), oaep)
        return len(chunk)

    size = max(len(pairs) // (threads * 8), 1)
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    return lambda: sum(pool.map(work, chunks))


def records_of(docs: Sequence[dict[str, Any]], old: keys.SealingKey,
               cluster: str) -> list[planning.ClusterSealedSecret]:
    out = []
    for doc in docs:
        identity = sealed_secrets.identity_of(doc)
        items = tuple(planning.ItemKey(item, old.fingerprint)
                      for item in doc["spec"]["encryptedData"])
        out.append(planning.ClusterSealedSecret(cluster, identity.namespace, identity.name,
                                                identity.scope, items, SecretState.STALE))
    return out


def engine(docs: Sequence[dict[str, Any]], old: keys.SealingKey, new: keys.SealingKey,
           pool: ThreadPoolExecutor) -> Callable[[], int]:
    """Plan, reseal, serialise: the whole engine path of an in-cluster reseal."""
    records = records_of(docs, old, "c1")
    by_ref = {f"c1/{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in docs}
    ring = resealing.KeyRing([new, old])
    targets = planning.Targets({"c1": new.fingerprint}, held=frozenset({old.fingerprint}))

    def run() -> int:
        plan = planning.plan_reseal(records, [], targets)
        requests = [resealing.ResealRequest(
            p.ref, by_ref[p.ref], new.certificate,
            hints={i.item: i.fingerprint for i in p.items}) for p in plan.planned]
        items = 0
        for outcome in resealing.iter_reseal(requests, ring, executor=pool):
            if outcome.resealed is None:
                raise AssertionError(outcome.error)
            json.dumps(outcome.resealed.apply(by_ref[outcome.ref]))  # the write's body
            items += len(outcome.resealed.changes)
        return items

    return run


def cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (git)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """Items per wall-clock second and per CPU second."""
    cpu, start = cpu_seconds(), time.perf_counter()
    items = run()
    return items / (time.perf_counter() - start), items / max(cpu_seconds() - cpu, 1e-9)


def bench_engine(old: keys.SealingKey, new: keys.SealingKey, pool: ThreadPoolExecutor,
                 threads: int, secrets: int, pairs: int) -> None:
    docs = make_secrets(old, secrets, random.Random(1))
    items = sum(len(d["spec"]["encryptedData"]) for d in docs)
    ceiling, path = raw_ceiling(docs, old, new, pool, threads), engine(docs, old, new, pool)
    path()  # warm up (label and padding caches, thread start)
    raw_rates, rates, ratios, cpu_ratios = [], [], [], []  # CPU: the pool's threads too
    for _ in range(pairs):
        raw, raw_cpu = timed(ceiling)
        rate, cpu_rate = timed(path)
        raw_rates.append(raw)
        rates.append(rate)
        ratios.append(rate / raw)
        cpu_ratios.append(cpu_rate / raw_cpu)
    ratio = statistics.median(ratios)
    print(f"engine: {secrets} SealedSecrets, {items} items per slice, {pairs} pairs")
    print(f"  raw reseal ceiling   {statistics.median(raw_rates):8.1f} items/s")
    print(f"  plan+reseal+json     {statistics.median(rates):8.1f} items/s   ratio {ratio:4.2f}"
          f" (per CPU-second {statistics.median(cpu_ratios):4.2f})   "
          f"{'ok' if ratio >= 0.9 else 'BELOW TARGET'} (target >= 0.9)")


def _git(*args: str, cwd: Path) -> None:
    env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "b@example.org", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@example.org"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def make_repository(root: Path, docs: Sequence[dict[str, Any]]) -> list[str]:
    seed = root / "seed"
    paths = []
    for i, doc in enumerate(docs):
        path = f"apps/team-{i % 50}/{doc['metadata']['name']}.yaml"
        target = seed / path
        target.parent.mkdir(parents=True, exist_ok=True)
        values = "".join(f"    {k}: {v}\n" for k, v in doc["spec"]["encryptedData"].items())
        annotations = "".join(f"    {k}: \"{v}\"\n" for k, v in
                              (doc["metadata"].get("annotations") or {}).items())
        target.write_text(
            f"# {path}: owned by team-{i % 20}\napiVersion: bitnami.com/v1alpha1\n"
            f"kind: SealedSecret\nmetadata:\n  name: {doc['metadata']['name']}\n"
            f"  namespace: {doc['metadata'].get('namespace', '')}\n"
            + (f"  annotations:\n{annotations}" if annotations else "")
            + f"spec:\n  encryptedData:\n{values}  template:\n    metadata:\n"
            f"      name: {doc['metadata']['name']}\n")
        paths.append(path)
    _git("init", "-q", "-b", "main", str(seed), cwd=root)
    _git("add", "-A", cwd=seed)
    _git("commit", "-qm", "seed", cwd=seed)
    _git("clone", "-q", "--bare", str(seed), str(root / "remote.git"), cwd=root)
    _git("clone", "-q", "--bare", str(root / "remote.git"), str(root / "cache.git"), cwd=root)
    return paths


async def git_reseal(root: Path, paths: Sequence[str], docs: Sequence[dict[str, Any]],
                     old: keys.SealingKey, new: keys.SealingKey,
                     pool: ThreadPoolExecutor
                     ) -> tuple[int, dict[str, float], dict[str, float]]:
    """The reseal executor's path for one repository: items resealed, and per phase
    the wall-clock and the CPU seconds (git's included)."""
    phases: dict[str, float] = {}
    cpu: dict[str, float] = {}
    mark, cpu_mark = time.perf_counter(), cpu_seconds()

    def phase(name: str) -> None:
        nonlocal mark, cpu_mark
        now, cpu_now = time.perf_counter(), cpu_seconds()
        phases[name], cpu[name] = now - mark, cpu_now - cpu_mark
        mark, cpu_mark = now, cpu_now

    documents = [planning.GitSealedSecret(
        "apps", path, 0, doc["metadata"].get("namespace", ""), doc["metadata"]["name"],
        sealed_secrets.identity_of(doc).scope,
        tuple(planning.ItemKey(i, old.fingerprint) for i in doc["spec"]["encryptedData"]))
        for path, doc in zip(paths, docs, strict=True)]
    plan = planning.plan_reseal([], documents, planning.Targets({}, {"apps": new.fingerprint}))
    phase("plan")
    ring = resealing.KeyRing([new, old])
    async with cli.Git() as git_cli:
        writer = writing.RepoWriter(git_cli, root / "cache.git", base_branch="main",
                                    worktrees_dir=root / "worktrees")
        workspace = await writer.prepare(JOB, dt.date(2026, 1, 2))
        phase("fetch+worktree")
        # Resealed files are written and staged as they come (git's I/O overlaps the
        # RSA work), so little but the commit is left when the last item is resealed.
        contents = await writer.read_files(workspace, [p.path or "" for p in plan.planned])
        phase("read")
        outcomes = await _reseal_write_stage(writer, workspace, plan, contents, ring, new,
                                             pool)
        phase("reseal+write+stage")
        errors = [e for o in outcomes for e in o.errors]
        if errors:
            raise AssertionError(errors[:3])
        changes = [writing.FileChange(o.source, o.result.content, o.documents)
                   for o in outcomes if o.result is not None and o.changed]
        sha = await writer.commit(workspace, JOB, changes)
        phase("commit")
        if sha is None:
            raise AssertionError("nothing committed")
        await writer.push(workspace, sha)
        phase("push")
        await writer.cleanup(workspace)
        phase("cleanup")
    items = sum(len(d.changes) for o in outcomes for d in o.documents)
    return items, phases, cpu


async def _reseal_write_stage(writer: writing.RepoWriter, workspace: writing.Workspace,
                              plan: planning.ResealPlan, contents: dict[str, bytes | None],
                              ring: resealing.KeyRing, new: keys.SealingKey,
                              pool: ThreadPoolExecutor) -> list[resealing.FileOutcome]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[resealing.FileOutcome | None] = asyncio.Queue()
    requests = [resealing.FileRequest(
        p.path or "", contents[p.path or ""] or b"", new.certificate,
        documents={p.document or 0: {i.item: i.fingerprint for i in p.items}})
        for p in plan.planned]

    def produce() -> None:
        try:
            for outcome in resealing.iter_reseal_files(requests, ring, executor=pool):
                loop.call_soon_threadsafe(queue.put_nowait, outcome)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    producer = asyncio.create_task(asyncio.to_thread(produce), name="bench:reseal")
    outcomes: list[resealing.FileOutcome] = []
    batch: list[writing.FileChange] = []
    stager: asyncio.Task[None] | None = None
    while True:
        outcome = await queue.get()
        if outcome is not None:
            outcomes.append(outcome)
            if outcome.changed and outcome.result is not None:
                batch.append(writing.FileChange(outcome.source, outcome.result.content,
                                                outcome.documents))
        if batch and (len(batch) >= 1000 or outcome is None):
            await writer.write_files(workspace, batch)
            batch = []
            if stager is None or stager.done():
                if stager is not None:
                    await stager
                stager = asyncio.create_task(writer.stage(workspace), name="bench:stage")
        if outcome is None:
            break
    await producer
    if stager is not None:
        await stager
    return outcomes


def bench_git(old: keys.SealingKey, new: keys.SealingKey, pool: ThreadPoolExecutor,
              threads: int, files: int) -> None:
    docs = make_secrets(old, files, random.Random(2))
    items = sum(len(d["spec"]["encryptedData"]) for d in docs)
    ceiling = raw_ceiling(docs, old, new, pool, threads)
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-") as tmp:
        root = Path(tmp)
        paths = make_repository(root, docs)
        before, before_cpu = timed(ceiling)
        resealed, phases, cpu = asyncio.run(git_reseal(root, paths, docs, old, new, pool))
        after, after_cpu = timed(ceiling)
    if resealed != items:
        raise AssertionError(f"resealed {resealed} of {items} items")
    counted = [name for name in phases if name not in ("push", "cleanup")]
    total = sum(phases[name] for name in counted)
    raw = (before + after) / 2
    rate = items / total
    ratio = rate / raw
    cpu_ratio = (items / sum(cpu[name] for name in counted)) / ((before_cpu + after_cpu) / 2)
    print(f"\ngit: {files} files, {items} items; bare remote on local disk")
    print(f"  raw reseal ceiling   {raw:8.1f} items/s  ({items / raw:5.1f}s for these items;"
          f" before {before:.1f}, after {after:.1f})")
    print(f"  splice + commit      {rate:8.1f} items/s  ({total:5.1f}s, push and worktree"
          f" removal apart)   ratio {ratio:4.2f} (per CPU-second {cpu_ratio:4.2f})   "
          f"{'ok' if ratio >= 0.8 else 'BELOW TARGET'} (target >= 0.8)")
    print("  phases (wall/CPU): " + ", ".join(f"{name} {seconds:.2f}s/{cpu[name]:.2f}s"
                                          for name, seconds in phases.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=400, help="SealedSecrets per slice")
    parser.add_argument("--pairs", type=int, default=5, help="ceiling/engine slice pairs")
    parser.add_argument("--files", type=int, default=5000, help="files in the Git part")
    parser.add_argument("--skip-git", action="store_true")
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    threads = resealing.rsa_threads()
    old, new = keys.generate_sealing_key(), keys.generate_sealing_key()  # 4096 bits
    print(f"sealfleet reseal benchmark: RSA-{old.private_key.key_size}, {threads} CPU(s), "
          f"a thread pool of {threads}")
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench") as pool:
        if not args.skip_engine:
            bench_engine(old, new, pool, threads, args.secrets, args.pairs)
        if not args.skip_git:
            bench_git(old, new, pool, threads, args.files)


if __name__ == "__main__":
    main()
