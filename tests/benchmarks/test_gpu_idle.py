"""benchmarks/gpu_idle.py: GPU idle time per step from a GPU-only trace, split by gap size."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpu_idle import GpuActivity, activities_from_trace, idle_breakdown  # noqa: E402


def test_gaps_are_classed_by_size_and_overlaps_count_once() -> None:
    trace = {"traceEvents": [
        {"cat": "kernel", "name": "b", "ts": 105.0, "dur": 10.0},  # 5 us after a: a launch gap
        {"cat": "kernel", "name": "a", "ts": 0.0, "dur": 100.0},
        {"cat": "gpu_memcpy", "name": "copy", "ts": 110.0, "dur": 20.0},  # overlaps b: no gap, busy to 130
        {"cat": "cpu_op", "name": "aten::add", "ts": 50.0, "dur": 1000.0},  # host ops are not GPU activity
        {"cat": "kernel", "name": "c", "ts": 180.0, "dur": 20.0},  # 50 us gap
        {"cat": "gpu_memset", "name": "fill", "ts": 2200.0, "dur": 100.0},  # a 2 ms bubble
    ]}
    activities = activities_from_trace(trace)
    assert [a.name for a in activities] == ["a", "b", "copy", "c", "fill"]
    out = idle_breakdown(activities, steps=1)
    assert out["span_ms_per_step"] == 2.3
    assert out["busy_ms_per_step"] == pytest.approx(0.245, abs=0.006)  # 100 + 25 (b and copy merged) + 20 + 100 us
    assert out["idle_ms_per_step"] == pytest.approx(2.055, abs=0.006)
    assert out["idle_ms_per_step_by_gap_size"] == {"under_10us": 0.01, "10_to_100us": 0.05, "100us_to_1ms": 0.0, "over_1ms": 2.0}
    assert out["gaps_per_step_by_size"] == {"under_10us": 1.0, "10_to_100us": 1.0, "100us_to_1ms": 0.0, "over_1ms": 1.0}
    assert out["longest_gaps"][0] == "2.00 ms: c -> fill"
    assert out["idle_ms_per_step_waiting_for_launch"] is None  # no launch calls in the trace: unknown, not 0


def test_each_gap_says_how_long_the_gpu_waited_for_the_launch_after_it() -> None:
    def launch(correlation: int, ts: float, name: str = "cudaLaunchKernel") -> dict:
        return {"cat": "cuda_runtime", "name": name, "ts": ts, "dur": 5.0, "tid": 7, "args": {"correlation": correlation}}

    trace = {"traceEvents": [
        {"cat": "kernel", "name": "a", "ts": 0.0, "dur": 100.0, "args": {"correlation": 1}},
        {"cat": "kernel", "name": "b", "ts": 3100.0, "dur": 100.0, "args": {"correlation": 2}},  # idle from 100: launched at 2000
        {"cat": "gpu_memcpy", "name": "c", "ts": 3300.0, "dur": 100.0, "args": {"correlation": 3}},  # launched long before its gap
        {"cat": "kernel", "name": "d", "ts": 3408.0, "dur": 10.0, "args": {"correlation": 4}},  # an 8 us gap, launched 6 us into it
        launch(1, 0.0), launch(2, 2000.0, "cudaGraphLaunch"), launch(3, 50.0, "cudaMemcpyAsync"), launch(4, 3406.0),
    ]}
    activities = activities_from_trace(trace)
    assert [(a.name, a.launch_us, a.launch_name) for a in activities][1] == ("b", 2000.0, "cudaGraphLaunch")
    out = idle_breakdown(activities, steps=1)
    assert out["idle_ms_per_step_waiting_for_launch"] == 1.91  # 1900 + 6 us
    assert out["idle_ms_per_step_waiting_for_launch_in_gaps_over_100us"] == 1.9
    assert out["longest_gaps"][:2] == ["3.00 ms: a -> b (launched by cudaGraphLaunch +1.90 ms into the gap)",
                                       "0.10 ms: b -> c (launched by cudaMemcpyAsync -3.15 ms into the gap)"]


def test_per_step_figures_divide_by_the_steps() -> None:
    activities = [GpuActivity(i * 1000.0, 600.0, f"k{i}") for i in range(4)]  # 400 us idle after each of the first three
    out = idle_breakdown(activities, steps=2)
    assert out["idle_ms_per_step"] == 0.6 and out["idle_ms_per_step_by_gap_size"]["100us_to_1ms"] == 0.6
    assert out["activities_per_step"] == 2.0


def test_no_gpu_activity_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no GPU activity recorded"):
        idle_breakdown([], steps=1)
