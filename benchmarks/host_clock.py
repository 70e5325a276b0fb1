"""Host time spent inside chosen callables, per training step and per thread.

Why: the training step is host-bound (benchmarks/README.md, sessions 8-11), and the profiler cannot
say by how much each part costs without itself inflating Python time about twice (219.7 ms profiled
against 105-111 ms steps in session 11). Wrapping a few callables with a clock costs a microsecond a
call. `train_throughput.py --host-timeline` wraps the compiled regions (the host's share of each
region call: guards, AOTAutograd's wrappers, the CUDA-graph tree's checks and the replay) and
`torch.cuda.CUDAGraph.replay` (the graph launch itself, in the forward on the main thread and in the
backward on the autograd engine's device thread), so the forward's host time splits into region
calls, graph launches and the eager glue between them.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from typing import Any, Callable


def replace_attribute(owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[[], None]:
    """Set `owner.attr` (an instance's or a class's callable) to `make(current)`; returns the undo,
    which puts the original back (or removes an instance attribute that was not there)."""
    had_own = attr in vars(owner)
    original: Callable[..., Any] = vars(owner)[attr] if had_own else getattr(owner, attr)
    setattr(owner, attr, make(original))

    def undo() -> None:
        if had_own:
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)

    return undo


class HostClock:
    """Accumulates host seconds per wrapped callable and thread ("main" or "worker"), step by step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)
        self._steps: list[dict[str, float]] = []
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        """Replace `owner.attr` (an instance's or a class's callable) by a timed call of it."""
        label = name or attr

        def timing(original: Callable[..., Any]) -> Callable[..., Any]:
            def timed(*args: Any, **kwargs: Any) -> Any:
                begin = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._add(label, time.perf_counter() - begin)
            return timed

        self._undo.append(replace_attribute(owner, attr, timing))

    def _add(self, label: str, seconds: float) -> None:
        thread = "main" if threading.current_thread() is threading.main_thread() else "worker"
        key = f"{label}@{thread}"
        with self._lock:
            self._current[key] += seconds
            self._calls[key] += 1

    def end_step(self) -> None:
        """Close the current step's totals (call after the step's last host work)."""
        with self._lock:
            self._steps.append(dict(self._current))
            self._current.clear()

    def medians_ms(self) -> dict[str, float]:
        """Median host ms per step of each label@thread (0 in steps where it was not called)."""
        keys = sorted({key for step in self._steps for key in step})
        return {key: round(statistics.median(step.get(key, 0.0) for step in self._steps) * 1000, 2) for key in keys}

    def calls_per_step(self) -> dict[str, float]:
        steps = max(len(self._steps), 1)
        return {key: round(count / steps, 1) for key, count in sorted(self._calls.items())}

    def restore(self) -> None:
        """Put every wrapped callable back (instance attributes that were not there are removed)."""
        while self._undo:
            self._undo.pop()()
