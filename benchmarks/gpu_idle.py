"""How long, and where, the GPU sits idle in training steps, with as little host overhead as possible.

The full profile (`train_throughput.py --profile`) records host ops and Python frames, which slows the
host 2x (session 16: 263 ms profiled steps against 110 ms) and so makes up GPU idle time that a clean
run does not have. This records the GPU's activity alone (CUPTI kernels, copies and fills, no host
ops), so the steps run at nearly their own speed, and splits the time between kernels by gap size:
launch gaps of a few microseconds add up over thousands of kernels, a bubble of milliseconds is one
place where the GPU waits for the host (such as the losses waiting for the Hungarian matching).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# (upper bound in microseconds, label) of the gap-size classes, smallest first
GAP_CLASSES = ((10.0, "under_10us"), (100.0, "10_to_100us"), (1000.0, "100us_to_1ms"), (float("inf"), "over_1ms"))


@dataclass(frozen=True)
class GpuActivity:
    start_us: float
    duration_us: float
    name: str


def activities_from_trace(trace: dict) -> list[GpuActivity]:
    """Kernels, copies and fills of a Chrome trace (torch.profiler's export), by start time."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    found = [GpuActivity(float(e["ts"]), float(e.get("dur", 0.0)), str(e.get("name", "?")))
             for e in events if e.get("cat") in GPU_CATEGORIES and "ts" in e]
    return sorted(found, key=lambda a: a.start_us)


def idle_breakdown(activities: Sequence[GpuActivity], steps: int, top: int = 12) -> dict:
    """Busy and idle ms per step between the first activity's start and the last one's end, idle
    split by gap size (GAP_CLASSES), and the longest gaps with the activities either side."""
    if not activities:
        raise ValueError("no GPU activity recorded: is the step running on a CUDA device?")
    by_class = dict.fromkeys((label for _, label in GAP_CLASSES), 0.0)
    count_by_class = dict.fromkeys(by_class, 0)
    gaps = idle_gaps(activities)
    for gap, _, _ in gaps:
        label = next(label for bound, label in GAP_CLASSES if gap < bound)
        by_class[label] += gap
        count_by_class[label] += 1
    span = max(a.start_us + a.duration_us for a in activities) - activities[0].start_us
    busy = span - sum(by_class.values())
    return {
        "span_ms_per_step": round(span / 1000 / steps, 2),
        "busy_ms_per_step": round(busy / 1000 / steps, 2),
        "idle_ms_per_step": round((span - busy) / 1000 / steps, 2),
        "idle_ms_per_step_by_gap_size": {k: round(v / 1000 / steps, 2) for k, v in by_class.items()},
        "gaps_per_step_by_size": {k: round(v / steps, 1) for k, v in count_by_class.items()},
        "activities_per_step": round(len(activities) / steps, 1),
        "longest_gaps": longest_gaps(gaps, top),
    }


def idle_gaps(activities: Sequence[GpuActivity]) -> list[tuple[float, GpuActivity, GpuActivity]]:
    """(microseconds, the activity before, the one after) of every stretch with nothing running,
    activities sorted by start (overlapping ones count as one busy stretch)."""
    gaps = []
    busy_until, before = activities[0].start_us, activities[0]
    for activity in activities:
        if activity.start_us > busy_until:
            gaps.append((activity.start_us - busy_until, before, activity))
        end = activity.start_us + activity.duration_us
        if end > busy_until:
            busy_until, before = end, activity
    return gaps


def longest_gaps(gaps: list[tuple[float, GpuActivity, GpuActivity]], top: int, name_width: int = 60) -> list[str]:
    """The `top` longest gaps as 'ms: activity before -> activity after'."""
    ranked = sorted(gaps, key=lambda gap: -gap[0])[:top]
    return [f"{us / 1000:.2f} ms: {a.name[:name_width]} -> {b.name[:name_width]}" for us, a, b in ranked]


def gpu_only_profile(step: Callable[[], None], count: int) -> dict:
    """Run `step` count times under a profiler that records only GPU activity; wall ms per step
    (timed before the profiler processes its events) and `idle_breakdown` of those steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        begin = time.perf_counter()
        for _ in range(count):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - begin) * 1000 / count
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    return {"wall_ms_per_step": round(wall_ms, 2), **idle_breakdown(activities_from_trace(trace), count)}
