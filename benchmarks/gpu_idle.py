"""How long, and where, the GPU sits idle in training steps, with as little host overhead as possible.

The full profile (`train_throughput.py --profile`) records host ops and Python frames, which slows the
host 2x (session 16: 263 ms profiled steps against 110 ms) and so makes up GPU idle time that a clean
run does not have. This records the GPU's activity alone (CUPTI kernels, copies and fills, no host
ops), so the steps run at nearly their own speed, and splits the time between kernels by gap size:
launch gaps of a few microseconds add up over thousands of kernels, a bubble of milliseconds is one
place where the GPU waits for the host (such as the losses waiting for the Hungarian matching).

CUPTI also records the host's launch calls (runtime API events) with a correlation id, so each gap
says when the work after it was launched: a launch after the GPU went idle means the GPU waited for
the host; an earlier one, that it waited on something else (a stream or event dependency).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
# (upper bound in microseconds, label) of the gap-size classes, smallest first
GAP_CLASSES = ((10.0, "under_10us"), (100.0, "10_to_100us"), (1000.0, "100us_to_1ms"), (float("inf"), "over_1ms"))


@dataclass(frozen=True)
class GpuActivity:
    start_us: float
    duration_us: float
    name: str
    launch_us: float | None = None  # when the host call that launched it started (None: not recorded)
    launch_name: str = ""  # that call: cudaLaunchKernel, cudaGraphLaunch, cudaMemcpyAsync, ...


def activities_from_trace(trace: dict) -> list[GpuActivity]:
    """Kernels, copies and fills of a Chrome trace (torch.profiler's export), by start time, each with
    its launch call when the trace has one of the same correlation id."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "ts" in e and "correlation" in e.get("args", {})}
    found = []
    for e in events:
        if e.get("cat") not in GPU_CATEGORIES or "ts" not in e:
            continue
        launch = launches.get(e.get("args", {}).get("correlation"))
        found.append(GpuActivity(float(e["ts"]), float(e.get("dur", 0.0)), str(e.get("name", "?")),
                                 None if launch is None else float(launch["ts"]), "" if launch is None else str(launch.get("name", "?"))))
    return sorted(found, key=lambda a: a.start_us)


def idle_breakdown(activities: Sequence[GpuActivity], steps: int, top: int = 12) -> dict:
    """Busy and idle ms per step between the first activity's start and the last one's end, idle
    split by gap size (GAP_CLASSES), the part of it spent waiting for the host to launch the next
    activity (launched after the gap began; gaps over 100 us apart), and the longest gaps with the
    activities either side."""
    if not activities:
        raise ValueError("no GPU activity recorded: is the step running on a CUDA device?")
    by_class = dict.fromkeys((label for _, label in GAP_CLASSES), 0.0)
    count_by_class = dict.fromkeys(by_class, 0)
    gaps = idle_gaps(activities)
    launches = any(a.launch_us is not None for a in activities)
    late_us = late_long_us = 0.0
    for gap, _, after in gaps:
        label = next(label for bound, label in GAP_CLASSES if gap < bound)
        by_class[label] += gap
        count_by_class[label] += 1
        late = launched_late_us(gap, after)
        late_us += late
        late_long_us += late if gap >= 100.0 else 0.0
    span = max(a.start_us + a.duration_us for a in activities) - activities[0].start_us
    busy = span - sum(by_class.values())
    return {
        "span_ms_per_step": round(span / 1000 / steps, 2),
        "busy_ms_per_step": round(busy / 1000 / steps, 2),
        "idle_ms_per_step": round((span - busy) / 1000 / steps, 2),
        "idle_ms_per_step_by_gap_size": {k: round(v / 1000 / steps, 2) for k, v in by_class.items()},
        "gaps_per_step_by_size": {k: round(v / steps, 1) for k, v in count_by_class.items()},
        # None when the trace holds no launch calls to correlate (not 0: that would read as "never waited")
        "idle_ms_per_step_waiting_for_launch": round(late_us / 1000 / steps, 2) if launches else None,
        "idle_ms_per_step_waiting_for_launch_in_gaps_over_100us": round(late_long_us / 1000 / steps, 2) if launches else None,
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


def launched_late_us(gap_us: float, after: GpuActivity) -> float:
    """How much of a gap the GPU spent waiting for `after` to be launched: from the gap's start to the
    launch call, at most the gap (0 when it was launched before the gap or not recorded)."""
    if after.launch_us is None:
        return 0.0
    gap_start = after.start_us - gap_us
    return min(max(after.launch_us - gap_start, 0.0), gap_us)


def longest_gaps(gaps: list[tuple[float, GpuActivity, GpuActivity]], top: int, name_width: int = 60) -> list[str]:
    """The `top` longest gaps as 'ms: activity before -> activity after', plus when the one after was
    launched when the trace says (a negative time: launched before the GPU went idle)."""
    ranked = sorted(gaps, key=lambda gap: -gap[0])[:top]
    rows = []
    for us, a, b in ranked:
        row = f"{us / 1000:.2f} ms: {a.name[:name_width]} -> {b.name[:name_width]}"
        if b.launch_us is not None:
            row += f" (launched by {b.launch_name} {(b.launch_us - (b.start_us - us)) / 1000:+.2f} ms into the gap)"
        rows.append(row)
    return rows


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
