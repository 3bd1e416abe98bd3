"""Sandbox benchmark: start + seed a big fleet, list it, weigh it.

Runs ``sealfleet sandbox`` in a child process (so the figures are the sandbox's own) and
prints each figure beside its target and a baseline measured in this same run:

1. start + seed time (until ``DIR/ready``) against the RSA floor: the key generations
   and item encryptions the seed needs, at the rates measured here, spread over the
   cores (seeding is bound by RSA);
2. a full paginated list of one cluster's SealedSecrets (``limit=500``) through
   kubernetes-asyncio raw calls, against ``json.loads`` of the very same page bytes;
   also the sandbox's CPU seconds until ready against the floor's CPU seconds, which a
   busy machine does not distort as it distorts wall time;
3. the sandbox process's resident memory (VmRSS and peak VmHWM), against the raw bytes
   of the objects it stores.

Usage: ``python bench/sandbox.py [--clusters 20] [--sealed-secrets 5000] [--keys 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from sealfleet.domain import hybrid
from sealfleet.domain import keys as keys_domain
from sealfleet.sandbox import SandboxProcess

LIST_PATH = "/apis/bitnami.com/v1alpha1/sealedsecrets"
TARGET_START_SECONDS = 60.0
TARGET_LIST_SECONDS = 0.5
TARGET_RSS_MB = 1500.0
KEYGEN_SAMPLES = 12


def rsa_floor(clusters: int, sealed_secrets: int, keys: int, bits: int) -> tuple[float, str]:
    """Seconds of pure RSA work the seed needs, divided over the cores.

    Timed in CPU seconds (``process_time``), so that other load on the machine does not
    inflate the floor; the same work on idle cores takes this long in wall time.
    """
    samples = []
    for _ in range(KEYGEN_SAMPLES):  # key generation time varies a lot: average many
        started = time.process_time()
        keys_domain.generate_sealing_key(bits=bits)
        samples.append(time.process_time() - started)
    keygen = statistics.mean(samples)
    key = keys_domain.generate_sealing_key(bits=bits)
    started = time.process_time()
    rounds = 3000
    for index in range(rounds):
        hybrid.encrypt(key.public_key, b"x" * 32, f"ns/name-{index}".encode())
    encrypt = (time.process_time() - started) / rounds
    items = clusters * sealed_secrets * 3  # 1-5 items each, 3 on average
    cores = os.cpu_count() or 1
    floor = (clusters * keys * keygen + items * encrypt) / cores
    detail = (f"{clusters * keys} keygens x {keygen * 1000:.0f} ms + {items} encrypts x "
              f"{encrypt * 1e6:.0f} us, / {cores} cores")
    return floor, detail


async def list_all(kubeconfig: Path, context: str) -> tuple[float, float, int, int]:
    """(list seconds, json.loads seconds of the same pages, items, bytes)."""
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), context=context,
                                      client_configuration=configuration)
    async with k8s_client.ApiClient(configuration=configuration) as api:
        await _pages(api)  # warm the connection and TLS session
        started = time.perf_counter()
        pages = await _pages(api)
        listed = time.perf_counter() - started
    started = time.perf_counter()
    items = sum(len(json.loads(page)["items"]) for page in pages)
    parsed = time.perf_counter() - started
    return listed, parsed, items, sum(len(p) for p in pages)


async def _pages(api: k8s_client.ApiClient) -> list[bytes]:
    pages: list[bytes] = []
    token: str | None = None
    while True:
        query = [("limit", "500")] + ([("continue", token)] if token else [])
        response = await api.call_api(LIST_PATH, "GET", query_params=query,
                                      header_params={"Accept": "application/json"},
                                      auth_settings=["BearerToken"], _preload_content=False)
        body = await response.read()
        response.release()
        pages.append(body)
        token = json.loads(body)["metadata"].get("continue")
        if not token:
            return pages


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (the seeding workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def report(name: str, value: float, unit: str, target: float | None, baseline: float,
           baseline_name: str) -> None:
    ratio = value / baseline if baseline else float("inf")
    goal = f"target < {target:g} {unit}: {value / target:.0%} of it" if target else "no target"
    print(f"{name:<28} {value:10.3f} {unit:<3} ({goal}); baseline {baseline_name} "
          f"{baseline:.3f} {unit} -> ratio {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--sealed-secrets", type=int, default=5000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--key-bits", type=int, default=4096)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    floor, floor_detail = rsa_floor(args.clusters, args.sealed_secrets, args.keys,
                                    args.key_bits)
    with tempfile.TemporaryDirectory(prefix="sealfleet-bench-") as tmp:
        state = Path(tmp) / "state"
        sandbox_args = ["--clusters", str(args.clusters), "--sealed-secrets",
                        str(args.sealed_secrets), "--namespaces", str(args.namespaces),
                        "--keys", str(args.keys), "--key-bits", str(args.key_bits),
                        "--seed", "1"]
        with SandboxProcess(state, sandbox_args, timeout=600) as sandbox:
            assert sandbox.ready_after is not None
            cpu = cpu_seconds(sandbox.pid)
            listed, parsed, items, size = asyncio.run(
                list_all(state / "kubeconfig", "sandbox-1"))
            rss, peak = memory(sandbox.pid)
            seed: dict[str, Any] = json.loads((state / "seed.json").read_text())
        stored_mb = _stored_bytes(seed, size, items) / 1024 / 1024

    total = args.clusters * args.sealed_secrets
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other processes stretch the wall-clock figures; "
          "CPU seconds hardly)")
    print(f"sandbox: {args.clusters} clusters x {args.sealed_secrets} SealedSecrets "
          f"({total} objects + their Secrets), {args.keys} x {args.key_bits}-bit keys each")
    report("start + seed", sandbox.ready_after, "s", TARGET_START_SECONDS, floor,
           f"RSA floor ({floor_detail})")
    cores = os.cpu_count() or 1
    report("start + seed CPU", cpu, "s", None, floor * cores,
           "RSA floor in CPU seconds (machine load does not inflate CPU time)")
    report(f"list {items} (limit 500)", listed, "s", TARGET_LIST_SECONDS, parsed,
           f"json.loads of the same {size / 1e6:.1f} MB")
    report("sandbox RSS (current)", rss, "MB", TARGET_RSS_MB, stored_mb,
           "raw JSON of the stored SealedSecrets")
    report("sandbox RSS (peak)", peak, "MB", TARGET_RSS_MB, stored_mb,
           "raw JSON of the stored SealedSecrets")


def _stored_bytes(seed: dict[str, Any], list_bytes: int, items: int) -> float:
    """Estimate: every cluster stores as many SealedSecret bytes as the listed one."""
    per_object = list_bytes / max(items, 1)
    return per_object * len(seed["sealed_secrets"])


if __name__ == "__main__":
    main()
