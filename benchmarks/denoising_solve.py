"""Host time of one frame's denoising queries: queue the noisy anchors, then wait for their in-group
Hungarian solves (`PendingDenoising.finish`), as the training forward does before the head.

The default config: batch 2, 128 GT per sample (max_dn_gt), 5 groups, positive and negative copies
(256 slots x 128 GT per group). The main thread blocks in `finish()` until every group is solved, so
this time sits on the step's critical path (session 14's H100 trace: 9-13 ms a step when the ten
solves ran one after another on one worker).

    PYTHONPATH=. python benchmarks/denoising_solve.py [--workers 1 2 8] [--repeats 20] [--device cpu]

Prints one JSON record: median ms per frame (start + finish) and of the wait in `finish()` alone,
for each Hungarian pool size. On a CPU the costs are computed on the CPU too (part of start); on a
GPU they are one kernel and the wait is what the main thread loses.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from sparse4d.config.model import ModelConfig
from sparse4d.model import denoising


def frame_ms(pool: ThreadPoolExecutor, repeats: int, num_gt: int, batch: int, device: torch.device) -> tuple[float, float]:
    """Median ms of (start + finish, the wait in finish alone)."""
    cfg = ModelConfig().head.sampler
    g = torch.Generator().manual_seed(0)
    gt = [(torch.randn(num_gt, 11, generator=g) * 10).to(device) for _ in range(batch)]
    labels = [torch.randint(0, 3, (num_gt,), generator=g).to(device) for _ in range(batch)]
    ids = [torch.arange(num_gt).to(device) for _ in range(batch)]
    weights = torch.tensor(cfg.reg_weights).to(device)
    denoising.solver_pool = lambda: pool  # the module looks its pool up at call time
    times, waits = [], []
    for _ in range(repeats + 2):
        begin = time.perf_counter()
        pending = denoising.start_denoising_queries(gt, labels, ids, num_groups=cfg.num_dn_groups, noise_scale=list(cfg.dn_noise_scale),
                                                    max_dn_gt=cfg.max_dn_gt, add_neg_dn=cfg.add_neg_dn, reg_weights=weights, generator=g)
        assert pending is not None
        queued = time.perf_counter()
        pending.finish()
        if device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        times.append((end - begin) * 1000)
        waits.append((end - queued) * 1000)
    return statistics.median(times[2:]), statistics.median(waits[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, min(8, os.cpu_count() or 1)])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--num-gt", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.set_num_threads(1)  # the CPU-side costs must not take the cores the solver threads use
    record = {"cpu_count": os.cpu_count(), "device": str(device), "torch": torch.__version__, "batch": args.batch, "num_gt": args.num_gt,
              "ms_per_frame_median": {}, "ms_waiting_in_finish_median": {}}
    for workers in args.workers:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            total, wait = frame_ms(pool, args.repeats, args.num_gt, args.batch, device)
        record["ms_per_frame_median"][f"{workers}_workers"] = round(total, 2)
        record["ms_waiting_in_finish_median"][f"{workers}_workers"] = round(wait, 2)
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
