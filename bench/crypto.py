"""Throughput of sealfleet's crypto paths against the raw RSA-OAEP-4096 decrypt rate.

    python bench/crypto.py [--seconds 0.25] [--pairs 7]

RSA-OAEP decryption with a 4096-bit key is the irreducible cost of unsealing,
attributing and resealing an item, so each sealfleet path is printed beside the raw
``cryptography`` decrypt rate measured in the same run, on one thread and on a thread
pool sized to the CPUs (cryptography releases the GIL, so threads scale), with the
ratio.  Target: every ratio >= 0.9.  Machines are shared and noisy, so each path is
measured in short slices alternating with the raw decrypt, and the median of the
per-pair ratios is reported.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from sealfleet.domain import attribution, hybrid, keys, sealed_secrets

ITEMS_PER_SECRET = 8
VALUE_BYTES = 64


@dataclass(frozen=True)
class Workload:
    """One measured path: *op* takes one input and returns how many items it handled."""

    name: str
    inputs: Sequence[Any]
    op: Callable[[Any], int]


def _loop(workload: Workload, deadline: float, offset: int) -> int:
    done = 0
    inputs = workload.inputs
    index = offset
    while time.perf_counter() < deadline:
        done += workload.op(inputs[index % len(inputs)])
        index += 1
    return done


def measure(workload: Workload, seconds: float, threads: int,
            pool: ThreadPoolExecutor | None) -> tuple[float, float]:
    """Items per wall-clock second and per CPU second over a time box on *threads* threads.

    The per-CPU-second figure ignores time stolen by other processes, which makes it
    the steadier efficiency measure on a shared machine.
    """
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    if pool is None or threads == 1:
        done = _loop(workload, deadline, 0)
    else:
        futures = [pool.submit(_loop, workload, deadline, i * 7) for i in range(threads)]
        done = sum(f.result() for f in futures)
    wall = time.perf_counter() - start
    cpu = max(time.process_time() - cpu_start, 1e-9)
    return done / wall, done / cpu


def build_workloads(key: keys.SealingKey) -> tuple[Workload, list[Workload]]:
    public_key, private_key = key.public_key, key.private_key
    secrets_in = [{"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": f"app-{i}", "namespace": "team-a"},
                   "data": {f"item-{j}": base64.b64encode(os.urandom(VALUE_BYTES)).decode()
                            for j in range(ITEMS_PER_SECRET)}}
                  for i in range(32)]
    sealed = [sealed_secrets.seal_secret(s, public_key) for s in secrets_in]
    one_item = [sealed_secrets.seal_secret(
        {"kind": "Secret", "metadata": {"name": f"one-{i}", "namespace": "team-a"},
         "data": {"v": base64.b64encode(os.urandom(VALUE_BYTES)).decode()}}, public_key)
        for i in range(64)]
    items = [(value, sealed_secrets.identity_of(doc).label)
             for doc in sealed for value in doc["spec"]["encryptedData"].values()]
    rsa_parts = [hybrid.split(base64.b64decode(value))[0] for value, _ in items]
    labels = [label for _, label in items]
    # The baseline: cryptography alone, padding built once, nothing else per item.
    oaep = [padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                         label=label) for label in labels]
    raw_inputs = list(zip(rsa_parts, oaep, strict=True))

    def raw(pair: tuple[bytes, padding.OAEP]) -> int:
        private_key.decrypt(pair[0], pair[1])
        return 1

    def seal(secret: dict[str, Any]) -> int:
        return len(sealed_secrets.seal_secret(secret, public_key)["spec"]["encryptedData"])

    def unseal(doc: dict[str, Any]) -> int:
        return len(sealed_secrets.unseal(doc, [private_key])["data"])

    candidates = [key]

    def attribute(item: tuple[str, bytes]) -> int:
        found = attribution.attribute_item(item[0], item[1], candidates)
        if found.fingerprint is None:
            raise AssertionError("attribution failed")
        return 1

    def reseal(doc: dict[str, Any]) -> int:
        return len(sealed_secrets.reencrypt(doc, [private_key], public_key)["spec"][
            "encryptedData"])

    return Workload("raw RSA-OAEP-4096 decrypt", raw_inputs, raw), [
        Workload("seal (per item)", secrets_in, seal),
        Workload("unseal (per item)", sealed, unseal),
        Workload("attribution (per item)", items, attribute),
        Workload("one-item reseal (decrypt+encrypt)", one_item, reseal),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.25,
                        help="time box of one measurement slice")
    parser.add_argument("--pairs", type=int, default=7,
                        help="raw/sealfleet slice pairs per path (the median ratio is kept)")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    key = keys.generate_sealing_key()  # 4096 bits, the controller's default
    baseline, workloads = build_workloads(key)
    print(f"sealfleet crypto benchmark: RSA-{key.private_key.key_size}, "
          f"{ITEMS_PER_SECRET} items of {VALUE_BYTES} B per Secret, {cpus} CPU(s); "
          f"each path alternates with the raw decrypt in {args.pairs} pairs of "
          f"{args.seconds:.2f}s slices, medians reported")
    with ThreadPoolExecutor(max_workers=cpus, thread_name_prefix="bench") as pool:
        for threads in sorted({1, cpus}):
            print(f"\n{threads} thread(s):")
            width = max(len(w.name) for w in workloads)
            for workload in workloads:
                # Alternating slices see the same background load, so the ratio of each
                # pair is fair even on a shared, noisy machine.
                raw_rates, rates, ratios, cpu_ratios = [], [], [], []
                for _ in range(args.pairs):
                    raw_rate, raw_cpu_rate = measure(baseline, args.seconds, threads, pool)
                    rate, cpu_rate = measure(workload, args.seconds, threads, pool)
                    raw_rates.append(raw_rate)
                    rates.append(rate)
                    ratios.append(rate / raw_rate)
                    cpu_ratios.append(cpu_rate / raw_cpu_rate)
                ratio = statistics.median(ratios)
                verdict = "ok" if ratio >= 0.9 else "BELOW TARGET"
                print(f"  {workload.name:<{width}} {statistics.median(rates):9.1f} items/s"
                      f"   raw decrypt {statistics.median(raw_rates):7.1f}/s"
                      f"   ratio {ratio:5.2f} (per CPU-second {statistics.median(cpu_ratios):5.2f})"
                      f"   {verdict}")


if __name__ == "__main__":
    main()
