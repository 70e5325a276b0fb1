"""Host time of one frame's denoising queries: start their in-group Hungarian solves, then wait for
them (`PendingDenoising.finish`), as the training forward does before the head.

The default config: batch 2, 128 GT per sample (max_dn_gt), 5 groups, positive and negative copies
(256 slots x 128 GT per group). The main thread blocks in `finish()` until every group is solved, so
this time sits on the step's critical path (session 14's H100 trace: 9-13 ms a step when the ten
solves ran one after another on one worker; session 15: 2.4-4.7 ms with one task per group).

    PYTHONPATH=. python benchmarks/denoising_solve.py [--workers 1 2 8] [--gt host device] [--repeats 20] [--device cpu]

Prints one JSON record: median ms per frame (start + finish) and of the wait in `finish()` alone, for
each Hungarian pool size and each place the GT is given (`--gt`): "host" (what the trainer does: each
worker computes its group's costs from host arrays) or "device" (the costs computed on the device and
copied back; on a CPU run both are the host). Here the GPU is otherwise idle: in training a device
cost also waits for the work queued before it.
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


def frame_ms(pool: ThreadPoolExecutor, repeats: int, num_gt: int, batch: int, device: torch.device, gt_on: torch.device) -> tuple[float, float]:
    """Median ms of (start + finish, the wait in finish alone), the GT given on `gt_on`."""
    cfg = ModelConfig().head.sampler
    g = torch.Generator().manual_seed(0)
    gt = [(torch.randn(num_gt, 11, generator=g) * 10).to(gt_on) for _ in range(batch)]
    labels = [torch.randint(0, 3, (num_gt,), generator=g).to(gt_on) for _ in range(batch)]
    ids = [torch.arange(num_gt).to(gt_on) for _ in range(batch)]
    weights = torch.tensor(cfg.reg_weights).to(gt_on)
    denoising.solver_pool = lambda: pool  # the module looks its pool up at call time
    times, waits = [], []
    for _ in range(repeats + 2):
        begin = time.perf_counter()
        pending = denoising.start_denoising_queries(gt, labels, ids, num_groups=cfg.num_dn_groups, noise_scale=list(cfg.dn_noise_scale),
                                                    max_dn_gt=cfg.max_dn_gt, add_neg_dn=cfg.add_neg_dn, reg_weights=weights, device=device,
                                                    generator=g)
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
    parser.add_argument("--gt", choices=("host", "device"), nargs="+", default=["host", "device"],
                        help="where the GT is given: host (the trainer's way) and/or the device")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.set_num_threads(1)  # the CPU-side costs must not take the cores the solver threads use
    record = {"cpu_count": os.cpu_count(), "device": str(device), "torch": torch.__version__, "batch": args.batch, "num_gt": args.num_gt,
              "ms_per_frame_median": {}, "ms_waiting_in_finish_median": {}}
    for place in args.gt:
        for workers in args.workers:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                total, wait = frame_ms(pool, args.repeats, args.num_gt, args.batch, device, torch.device("cpu") if place == "host" else device)
            record["ms_per_frame_median"][f"gt_on_{place}_{workers}_workers"] = round(total, 2)
            record["ms_waiting_in_finish_median"][f"gt_on_{place}_{workers}_workers"] = round(wait, 2)
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
