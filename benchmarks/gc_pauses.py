"""Host time of Python's garbage collector per training step, automatic vs scheduled, on the CPU.

The training step is host-bound on a GPU (benchmarks/README.md), so collector pauses add to it.
This runs the default head's training step (compiled regions with the `aot_eager` backend, as
benchmarks/eager_ops.py; a small backbone and image since only the Python heap matters here) and
times every collection through `gc.callbacks`: first with the collector on automatic (what training
did before `sparse4d.engine.scheduled_gc`), then paused with a young-generation collection every
`--interval` steps (what the trainer does now). It also counts the unreachable objects one steady
step leaves behind (cyclic garbage that only the collector can free).

    PYTHONPATH=. python benchmarks/gc_pauses.py [--steps 6] [--num-anchor 900] [--num-gt 128] [--json gc.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eager_ops import cpu_training_step, warm_up  # noqa: E402


class CollectionClock:
    """Count and time the collector's runs by generation."""

    def __init__(self) -> None:
        self.runs: dict[int, list[float]] = defaultdict(list)
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.runs[int(info["generation"])].append(time.perf_counter() - self._began)

    def per_step(self, steps: int) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"collections_per_step": round(len(t) / steps, 2), "ms_per_step": round(sum(t) * 1000 / steps, 3),
                            "max_ms": round(max(t) * 1000, 2)} for g, t in sorted(self.runs.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--interval", type=int, default=50, help="scheduled mode: steps between young-generation collections")
    parser.add_argument("--num-anchor", type=int, default=900, help="fewer runs faster on the CPU (at least head.num_output, 300)")
    parser.add_argument("--num-gt", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    train_step = cpu_training_step(backbone="resnet_18", num_anchor=args.num_anchor, num_gt=args.num_gt)
    warm_up(train_step)
    gc.collect()
    tracked = len(gc.get_objects())
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    train_step(3)
    leftover = gc.collect()
    tensors = sum(isinstance(o, torch.Tensor) for o in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()

    results = {}
    for mode in ("automatic", "scheduled"):
        clock = CollectionClock()
        gc.collect()
        if mode == "automatic":
            gc.enable()
        gc.callbacks.append(clock)
        begin = time.perf_counter()
        for i in range(args.steps):
            train_step(4 + i)
            if mode == "scheduled" and (i + 1) % args.interval == 0:
                gc.collect(1)
        wall = time.perf_counter() - begin
        gc.callbacks.remove(clock)
        gc.disable()
        per_gen = clock.per_step(args.steps)
        total = sum(v["ms_per_step"] for v in per_gen.values())
        results[mode] = {"collector_ms_per_step": round(total, 3), "by_generation": per_gen, "step_s": round(wall / args.steps, 2)}
        print(f"{mode}: collector {total:.2f} ms/step {per_gen}")
    gc.enable()
    record = {"torch": torch.__version__, "num_anchor": args.num_anchor, "num_gt": args.num_gt, "steps": args.steps,
              "interval": args.interval, "objects_tracked_after_warmup": tracked,
              "unreachable_objects_per_step": leftover, "unreachable_tensors_per_step": tensors, **results}
    print(f"tracked objects after warm-up: {tracked}; one steady step leaves {leftover} unreachable objects ({tensors} tensors)")
    if mode == "scheduled" and args.steps < args.interval:
        print(f"note: {args.steps} steps < --interval {args.interval}: the scheduled collection (about one young "
              "collection's cost per interval) did not run here", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
