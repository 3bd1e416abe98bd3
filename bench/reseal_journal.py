"""The reseal job's per-object journal alone: what it costs a 20,000-object job.

Journals N objects as planned with their job (one transaction), marks them ``written``
then ``done`` in batches of ``reseal_journal.BATCH`` (one transaction each, as a cluster
step does), and reads the counts the job document shows, on a fresh database.  Printed:
wall and CPU seconds of each, beside the RSA floor those objects would need at the
given items per object and floor rate (``bench/reseal_fleet.py`` measures the floor).

Usage: ``python bench/reseal_journal.py [--objects 20000] [--items 3] [--floor 224]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.job_objects import JobObject
from sealfleet.app.jobs.reseal_journal import BATCH


async def measure(objects: int, items: int, floor: float) -> None:
    planned = [(f"cluster:c{i % 20}", f"ns-{i % 7}/secret-{i}") for i in range(objects)]
    spent = 0.0
    with tempfile.TemporaryDirectory() as folder:
        async with Store.open(Path(folder) / "sealfleet.db") as store:
            wall, cpu = time.perf_counter(), time.process_time()
            job = await store.jobs.create_job("reseal", {}, sorted({s for s, _ in planned}),
                                              objects=planned)
            spent += time.process_time() - cpu
            print(f"{objects} objects journaled with their job: "
                  f"{time.perf_counter() - wall:.3f} s wall, {time.process_time() - cpu:.3f} s CPU")
            for state in ("written", "done"):
                wall, cpu = time.perf_counter(), time.process_time()
                for start in range(0, objects, BATCH):
                    await store.jobs.update_objects(job, [
                        JobObject(step, ref, state, outcome="resealed", generation=2)
                        for step, ref in planned[start:start + BATCH]])
                spent += time.process_time() - cpu
                print(f"marked {state} in {-(-objects // BATCH)} batches: "
                      f"{time.perf_counter() - wall:.3f} s wall, "
                      f"{time.process_time() - cpu:.3f} s CPU")
            wall = time.perf_counter()
            for _ in range(10):
                await store.jobs.object_counts(job)
            print(f"the job document's counts: {(time.perf_counter() - wall) * 100:.1f} ms a read")
    rsa = objects * items / floor
    print(f"journal CPU {spent:.2f} s beside an RSA floor of {rsa:.0f} s "
          f"({objects * items} items at {floor:.0f} items/s): {100 * spent / rsa:.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20000)
    parser.add_argument("--items", type=int, default=3, help="items per object")
    parser.add_argument("--floor", type=float, default=224.0, help="RSA floor, items/s")
    args = parser.parse_args()
    asyncio.run(measure(args.objects, args.items, args.floor))


if __name__ == "__main__":
    main()
