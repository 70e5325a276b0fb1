"""Job store throughput and launch latency on this machine (prints numbers; not a test).

    PYTHONPATH=. python benchmarks/jobs_store.py [--jobs 200] [--procs 10]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

from sparse4d.jobs.backend import JobBackend


def _create_many(root: str, start: int, count: int) -> None:
    backend = JobBackend(root)
    for i in range(start, start + count):
        backend.create_job("train", {"variant": i}, launch=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--procs", type=int, default=10)
    parser.add_argument("--launches", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backend = JobBackend(os.path.join(tmp, "serial"))
        started = time.perf_counter()
        ids = [backend.create_job("train", {"variant": i}, launch=False) for i in range(args.jobs)]
        serial = time.perf_counter() - started
        print(f"create_job (record only), 1 process: {args.jobs / serial:.0f} jobs/s")

        started = time.perf_counter()
        for job_id in ids:
            backend.get_job_status(job_id)
        print(f"get_job_status: {(time.perf_counter() - started) / len(ids) * 1e3:.2f} ms/call")

        root = os.path.join(tmp, "parallel")
        per = args.jobs // args.procs
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_create_many, args=(root, p * per, per)) for p in range(args.procs)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        parallel = time.perf_counter() - started
        count = len(JobBackend(root).store.list_ids())
        print(f"create_job (record only), {args.procs} processes: {count} jobs in {parallel:.2f} s "
              f"(incl. interpreter start), store has {count}/{per * args.procs}")

        os.environ["SPARSE4D_TRAINER"] = f"{sys.executable} -c pass"
        launcher = JobBackend(os.path.join(tmp, "launch"))
        latencies = []
        for i in range(args.launches):
            started = time.perf_counter()
            job_id = launcher.create_job("train", {"variant": i})
            launcher.wait(job_id, timeout=60, poll=0.01)
            latencies.append(time.perf_counter() - started)
        print(f"create_job -> Done with an empty trainer: median {statistics.median(latencies) * 1e3:.0f} ms, "
              f"max {max(latencies) * 1e3:.0f} ms over {args.launches}")


if __name__ == "__main__":
    main()
