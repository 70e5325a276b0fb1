"""HostClock: per-step host time of wrapped callables, split by thread, and a clean restore."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from host_clock import HostClock  # noqa: E402


class Launcher:
    def replay(self) -> str:
        time.sleep(0.002)
        return "replayed"


class Region:
    def __init__(self, graph: Launcher) -> None:
        self.graph = graph

    def layer(self, x: int) -> int:
        self.graph.replay()
        return x + 1


def test_times_nested_calls_per_step_and_thread_then_restores() -> None:
    region = Region(Launcher())
    clock = HostClock()
    clock.wrap(region, "layer")  # an instance's method, as compile_regions sets them
    clock.wrap(Launcher, "replay", "graph_replay")  # a class attribute, as torch.cuda.CUDAGraph.replay
    for step in range(3):
        for _ in range(step + 1):
            assert region.layer(1) == 2
        if step == 2:  # a backward-like call on another thread
            worker = threading.Thread(target=region.graph.replay)
            worker.start()
            worker.join()
        clock.end_step()
    medians, calls = clock.medians_ms(), clock.calls_per_step()
    assert calls == {"graph_replay@main": 2.0, "graph_replay@worker": 0.3, "layer@main": 2.0}
    assert medians["layer@main"] >= medians["graph_replay@main"] >= 2 * 2.0 * 0.9  # step 1: two calls of >= 2 ms
    assert medians["graph_replay@worker"] == 0.0  # only one of three steps had it
    clock.restore()
    assert "layer" not in vars(region) and Launcher.replay(region.graph) == "replayed"
    assert Launcher.__dict__["replay"].__name__ == "replay"
