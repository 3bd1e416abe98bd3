"""Benchmark: ``GET /api/v1/staleness`` with a 100k-SealedSecret inventory vs aiohttp hello-world.

Run: ``python bench/api.py [--clusters 20] [--per-cluster 5000] [--requests 20000]``

The daemon's real API (``build_app`` + ``ApiServer``, TCP listener with bearer-token
auth, the cached pre-serialised snapshot) and a bare aiohttp hello-world handler run in
this process on loopback; the load generator runs in a *separate process* (spawned),
so client work does not share the server's GIL.  Each target gets a fixed number of
requests (bounded loops): first sequentially (one connection: latency without queueing),
then with ``--concurrency`` keep-alive connections (throughput, and latency under load).

Targets (issue 4): p99 < 10 ms; throughput >= 40% of the hello-world handler measured in
the same run.  Also printed: the snapshot rebuild time with this inventory (what a change
costs, off the request path).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from sealfleet.adapters.http_api import ApiDeps, ApiServer, InventoryView, build_app, status_page
from sealfleet.adapters.store import KeyEncryptionKey, Store, generate_kek_file
from sealfleet.adapters.store.records import ItemFact, KeyHolding, KeyRecord, SealedSecretRecord
from sealfleet.app.logging import configure_logging
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState, StalenessPolicy

TOKEN = "bench-read-token-0123456789abcdef"  # noqa: S105 - throwaway, loopback only
ITEMS = ("username", "password", "token", "api-key", "url")


def fingerprint(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


async def populate(store: Store, clusters: int, per_cluster: int) -> int:
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    rows = 0
    for c in range(clusters):
        name = f"cluster-{c:02d}"
        old, new = fingerprint(f"{name}-old"), fingerprint(f"{name}-new")
        await store.keys.upsert_keys([KeyRecord(old, now - 65 * day, now + 3000 * day, "cluster"),
                                      KeyRecord(new, now - 5 * day, now + 3000 * day, "cluster")])
        await store.inventory.upsert_cluster(name, server=f"https://{name}.example:6443")
        await store.inventory.record_cluster_status(name, reachable=True, last_scan_at=now,
                                                    scan_duration_ms=1234, sealing_key=new,
                                                    sealing_key_source="cert.pem")
        await store.inventory.replace_cluster_keys(name, [
            KeyHolding(fp, f"key-{i}", "active", "1", now, now)
            for i, fp in enumerate((old, new))])
        batch = []
        for i in range(per_cluster):
            n_items = 2 + i % 3  # 2..4 items, 3 on average
            stale = i % 4 == 0
            items = tuple(ItemFact(ITEMS[j], f"{name}-{i}-{j}",
                                   old if stale and j == 0 else new) for j in range(n_items))
            batch.append(SealedSecretRecord(
                cluster=name, namespace=f"ns-{i % 50}", name=f"secret-{i:05d}",
                uid=f"{name}-{i}", resource_version=str(i), generation=1,
                scope=Scope.STRICT, ciphertext_fingerprint=f"ct-{name}-{i}", items=items,
                state=SecretState.STALE if stale else SecretState.CURRENT, synced=True,
                synced_message=None, observed_at=now))
            if len(batch) == 5000:
                await store.inventory.upsert_sealed_secrets(batch)
                rows += len(batch)
                batch = []
        if batch:
            await store.inventory.upsert_sealed_secrets(batch)
            rows += len(batch)
    return rows


# ----------------------------------------------------------------- load generator
# Runs in a spawned child process: a bounded number of keep-alive GETs.

def load(url: str, token: str | None, requests: int, concurrency: int) -> dict[str, Any]:
    return asyncio.run(_load(url, token, requests, concurrency))


async def _load(url: str, token: str | None, requests: int,
                concurrency: int) -> dict[str, Any]:
    """A lean HTTP/1.1 keep-alive client on raw streams: the generator must cost far less
    than the servers it measures, or the hello-world figure is the client's speed."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
               "\r\n").encode()
    latencies: list[float] = []
    errors = 0
    per_worker = requests // concurrency

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200 ")

    async def worker(warm_up: int = 0) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(warm_up):
                await one(reader, writer)
            for _ in range(0 if warm_up else per_worker):
                started = time.perf_counter()
                if not await one(reader, writer):
                    errors += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    await worker(warm_up=min(50, per_worker))
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "seconds": wall,
            "rps": len(latencies) / wall,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000}


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="Hello, world")


async def main(args: argparse.Namespace) -> int:
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-api-") as tmp:
        directory = Path(tmp)
        kek = KeyEncryptionKey.from_file(generate_kek_file(directory / "kek"))
        async with Store.open(directory / "inventory.db", kek=kek) as store:
            started = time.perf_counter()
            rows = await populate(store, args.clusters, args.per_cluster)
            print(f"inventory: {rows} SealedSecrets in {args.clusters} clusters "
                  f"(populated in {time.perf_counter() - started:.1f} s)")
            policy = StalenessPolicy(dt.timedelta(days=30), dt.timedelta(days=30))
            view = InventoryView(store, policy=policy,
                                 render_status_page=status_page.render, max_age=3600)
            rebuilds = []
            for _ in range(3):
                t0 = time.perf_counter()
                snap = await view.rebuild()
                rebuilds.append(time.perf_counter() - t0)
            total = snap.report["fleet"]["sealed_secrets"]["total"]
            if total != rows:
                print(f"error: report counts {total} SealedSecrets, expected {rows}")
                return 1
            print(f"snapshot rebuild (off the request path): "
                  f"median {statistics.median(rebuilds) * 1000:.0f} ms; "
                  f"staleness body {len(snap.staleness_body)} bytes")
            deps = ApiDeps(view=view, store=store, read_token=TOKEN.encode())
            hello_app = web.Application()
            hello_app.router.add_get("/", hello)
            async with ApiServer(build_app(deps), socket_path=None,
                                 listen=("127.0.0.1", 0)) as api, \
                    ApiServer(hello_app, socket_path=None, listen=("127.0.0.1", 0)) as hw:
                targets = {
                    "hello-world": (f"http://127.0.0.1:{hw.tcp_port}/", None),
                    "staleness": (f"http://127.0.0.1:{api.tcp_port}/api/v1/staleness", TOKEN),
                }
                ctx = multiprocessing.get_context("spawn")
                loop = asyncio.get_running_loop()
                runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    # Alternate the targets over several rounds: the machine is shared,
                    # so neither side should get all the quiet (or noisy) moments.
                    for _ in range(args.rounds):
                        for concurrency, requests in ((1, args.latency_requests),
                                                      (args.concurrency, args.requests)):
                            for name, (url, token) in targets.items():
                                runs.setdefault((name, concurrency), []).append(
                                    await loop.run_in_executor(pool, load, url, token,
                                                               requests, concurrency))
    results = {key: {"requests": sum(r["requests"] for r in rs),
                     "errors": sum(r["errors"] for r in rs),
                     "rps": statistics.median(r["rps"] for r in rs),
                     "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in rs)}
               for key, rs in runs.items()}
    print(f"\nmedians of {args.rounds} alternating rounds")
    print(f"{'target':<12} {'conns':>5} {'requests':>8} {'errors':>6} {'req/s':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for (name, concurrency), r in results.items():
        print(f"{name:<12} {concurrency:>5} {r['requests']:>8} {r['errors']:>6} "
              f"{r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}")
    hw_rps = results[("hello-world", args.concurrency)]["rps"]
    st = results[("staleness", args.concurrency)]
    st1 = results[("staleness", 1)]
    ratio = st["rps"] / hw_rps
    print(f"\n/api/v1/staleness throughput: {st['rps']:.0f} req/s = {ratio:.0%} of "
          f"hello-world ({hw_rps:.0f} req/s) [target >= 40%]")
    print(f"/api/v1/staleness p99: {st1['p99_ms']:.2f} ms sequential, {st['p99_ms']:.2f} ms "
          f"with {args.concurrency} connections [target < 10 ms]")
    failed = any(r["errors"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--per-cluster", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--latency-requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    sys.exit(asyncio.run(main(parser.parse_args())))
