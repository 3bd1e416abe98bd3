"""Kubeconfig benchmark: connecting every context of one big kubeconfig, cache vs old path.

One file with ``--contexts`` contexts (default 400, inline base64 CA data and bearer
tokens, as the sandbox writes them) spread over ``--cas`` CAs.  Measured in this run:

1. ``KubeClient.connect`` through a :class:`KubeconfigCache`, enter and exit, for every
   context (client built, session opened and closed; no request, so no network): the
   first connection pays the one parse;
2. the path it replaces, ``kubernetes_asyncio.config.new_client_from_config`` plus
   ``close()`` per connection, on ``--old-samples`` contexts (each parses the whole file);

printed per connection and as a ratio, with the parses, SSL contexts and temp files each
path left behind.  Rounds alternate between the two so that load on the machine hits both.

Usage: ``python bench/kubeconfig.py [--contexts 400] [--cas 4] [--old-samples 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes_asyncio import config as k8s_config

from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.kube.kubeconfig import KubeconfigCache
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.tls import CertificateAuthority


def write_fleet(path: Path, contexts: int, cas: int) -> Path:
    ca_pems = [CertificateAuthority.create(f"bench-ca-{i}").issue_server().ca_pem
               for i in range(cas)]
    return write_kubeconfig(path, [
        KubeconfigContext(f"cluster-{i:04d}", f"https://10.{i // 250}.{i % 250}.1:6443",
                          ca_pems[i % cas], f"token-{i:04d}-" + "x" * 40)
        for i in range(contexts)])


async def cached_round(path: Path, names: list[str], cache: KubeconfigCache) -> list[float]:
    times = []
    for name in names:
        started = time.perf_counter()
        async with KubeClient.connect(str(path), name, cache=cache):
            pass
        times.append(time.perf_counter() - started)
    return times


async def old_round(path: Path, names: list[str]) -> list[float]:
    times = []
    for name in names:
        started = time.perf_counter()
        api = await k8s_config.new_client_from_config(config_file=str(path), context=name,
                                                      persist_config=False)
        await api.close()
        times.append(time.perf_counter() - started)
    return times


def parse_times(path: Path) -> tuple[float, float]:
    data = path.read_bytes()
    started = time.perf_counter()
    yaml.load(data, Loader=yaml.CSafeLoader)
    c_seconds = time.perf_counter() - started
    started = time.perf_counter()
    yaml.safe_load(data)
    return c_seconds, time.perf_counter() - started


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-kubeconfig-") as tmp:
        path = write_fleet(Path(tmp) / "kubeconfig", args.contexts, args.cas)
        names = [f"cluster-{i:04d}" for i in range(args.contexts)]
        step = max(1, args.contexts // args.old_samples)
        # Spread over the file and over the CAs (+i: not every sample on the same CA).
        old_names = [names[(i * step + i) % len(names)] for i in range(args.old_samples)]
        # Both paths' temp files land here, to be counted.
        temp_dir = Path(tmp) / "tmp"
        temp_dir.mkdir()
        tempfile.tempdir = str(temp_dir)
        print(f"kubeconfig: {args.contexts} contexts, {args.cas} CAs, "
              f"{path.stat().st_size / 1024:.0f} KiB")
        c_parse, py_parse = parse_times(path)
        print(f"one parse: libyaml {c_parse * 1000:.1f} ms, pure-Python "
              f"{py_parse * 1000:.1f} ms ({py_parse / c_parse:.1f}x)")

        cached: list[float] = []
        first: list[float] = []
        old: list[float] = []
        parses = built = cache_temp_files = 0
        for round_ in range(args.rounds):
            cache = KubeconfigCache()  # a cold cache each round: the parse is included
            times = await cached_round(path, names, cache)
            first.append(times[0])
            cached.extend(times)
            again = await cached_round(path, names, cache)  # a reconnect round: no parse
            cached.extend(again)
            parses, built = cache.parses, cache.tls_contexts_built
            if round_ == 0:  # before the old path's first connect
                cache_temp_files = len(list(temp_dir.iterdir()))
            old.extend(await old_round(path, old_names))
        old_temp_files = len(list(temp_dir.iterdir())) - cache_temp_files
        tempfile.tempdir = None

    new_mean, old_mean = statistics.mean(cached), statistics.mean(old)
    print(f"\nper connect, {args.rounds} rounds (connect + close, no request):")
    print(f"  KubeconfigCache:         mean {new_mean * 1000:8.3f} ms, median "
          f"{statistics.median(cached) * 1000:8.3f} ms over {len(cached)} connects "
          f"(first, with the parse: {statistics.median(first) * 1000:.1f} ms)")
    print(f"  new_client_from_config:  mean {old_mean * 1000:8.3f} ms, median "
          f"{statistics.median(old) * 1000:8.3f} ms over {len(old)} connects")
    print(f"  ratio old/new: {old_mean / new_mean:.0f}x per connect")
    print(f"\nconnecting all {args.contexts} contexts: cache {new_mean * args.contexts:.2f} s "
          f"(file parsed {parses}x per round, twice connected), old path "
          f"~{old_mean * args.contexts:.0f} s (parsed {args.contexts}x)")
    print(f"SSL contexts per round: cache {built} for {2 * args.contexts} connects; "
          f"old path one per connect")
    print(f"temp files left behind: cache {cache_temp_files}, old path {old_temp_files} "
          "(kept until the process exits)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=400)
    parser.add_argument("--cas", type=int, default=4)
    parser.add_argument("--old-samples", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    sys.exit(asyncio.run(main(parser.parse_args())))
