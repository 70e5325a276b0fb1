"""GPU time by model part and direction (forward / backward), read from a profiler trace.

Why: with the regions compiled and replayed as CUDA graphs, the CUDA events of the eager time split
can no longer be placed between the backbone, the head and the aggregation (they would sit inside a
graph), so `train_throughput.py --compile` could only report whole phases. The profiler still sees
every kernel, and each kernel names the host call that launched it (the runtime event with the same
correlation id, a `cudaGraphLaunch` for a replayed region). The forward host calls sit inside
`record_function("part:<name>")` ranges (`annotate`, `part`); a backward call sits inside the
autograd engine's `evaluate_function` of a node, which carries the sequence number of the forward op
that created it, so it is charged to that op's part. Kernels of the fused aggregation are split out
of their part by name. Gradient sums after a node run inside that node's scope, so they count with
its part; what the engine runs for no forward op (e.g. accumulating into `.grad`) is `unlinked`.

    python benchmarks/part_split.py trace.json.gz [--steps 2]
"""
from __future__ import annotations

import argparse
import contextlib
from collections import Counter, defaultdict
from typing import Any, Iterator

from host_clock import replace_attribute
from trace_gaps import GPU_CATEGORIES, LAUNCH_CATEGORIES, print_trace_analysis

PART_PREFIX = "part:"
BACKWARD_SCOPE = "autograd::engine::evaluate_function: "
SCOPE_CATEGORIES = ("cpu_op", "user_annotation", "python_function", *LAUNCH_CATEGORIES)
# the fused deformable aggregation's Triton kernels (sparse4d/model/fused_aggregation.py)
AGGREGATION_KERNELS = ("_forward_kernel", "_query_backward_kernel", "_pixel_backward_kernel", "_chunk_sum_kernel", "_chunk_carry_kernel")
UNANNOTATED, UNLINKED = "unannotated", "unlinked"
# ranges torch.optim opens itself around every optimizer's step and zero_grad
OPTIMIZER_SCOPES = ("Optimizer.step#", "Optimizer.zero_grad#")
WHOLE_PARTS = ("data", "optimizer", UNLINKED)  # no backward of their own: reported without "_fwd"


def part(name: str) -> contextlib.AbstractContextManager:
    """A host range whose kernels (and, through autograd, their backward kernels) count as `name`."""
    import torch

    return torch.profiler.record_function(PART_PREFIX + name)


@contextlib.contextmanager
def annotate(calls: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Run each `owner.attr` (a compiled region set on an instance) inside `part(name)` while the block
    runs, then put the attributes back as they were."""
    undo = []

    def labelled(name: str):
        def make(original: Any) -> Any:
            def annotated(*args: Any, **kwargs: Any) -> Any:
                with part(name):
                    return original(*args, **kwargs)
            return annotated
        return make

    try:
        for owner, attr, name in calls:
            undo.append(replace_attribute(owner, attr, labelled(name)))
        yield
    finally:
        for step in reversed(undo):
            step()


class HostScopes:
    """The host events of a trace as nested ranges per thread, to find what covered a point in time."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.parent: dict[int, dict[str, Any] | None] = {}
        self.by_seq: dict[int, dict[str, Any]] = {}
        for thread_events in self._threads(events).values():
            stack: list[dict[str, Any]] = []
            for event in thread_events:
                while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:  # ended before it
                    stack.pop()
                self.parent[id(event)] = stack[-1] if stack else None
                stack.append(event)
        # The forward op of each sequence number (its backward node carries the same one). Numbers count
        # per thread: only the training loop's thread (the one with the most such ops) is read. Ops record
        # the number the next autograd node will get, so ops that create no node (say a cast of an input
        # without gradient) share it with the op after them: the node's creator is the last of them.
        forward_ops = [e for e in events if e.get("cat") == "cpu_op" and "Sequence number" in e.get("args", {})
                       and self._backward_seq(e) is None]
        threads = Counter((e.get("pid"), e.get("tid")) for e in forward_ops)
        loop_thread = threads.most_common(1)[0][0] if threads else None
        for event in sorted(forward_ops, key=lambda e: e["ts"]):
            if (event.get("pid"), event.get("tid")) == loop_thread:
                self.by_seq[event["args"]["Sequence number"]] = event

    @staticmethod
    def _threads(events: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
        threads: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            if event.get("cat") in SCOPE_CATEGORIES and "dur" in event:
                threads[(event.get("pid"), event.get("tid"))].append(event)
        for thread_events in threads.values():
            thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        return threads

    def chain(self, event: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The event, then the ranges around it, innermost first."""
        node: dict[str, Any] | None = event
        while node is not None:
            yield node
            node = self.parent.get(id(node))

    def _backward_seq(self, event: dict[str, Any]) -> int | str | None:
        """The forward sequence number of the autograd node the event runs in ('none' for a node
        without one), or None when the event is not inside a backward node."""
        for node in self.chain(event):
            if node["name"].startswith(BACKWARD_SCOPE):
                return node.get("args", {}).get("Sequence number", "none")
        return None

    def _annotation(self, event: dict[str, Any]) -> str:
        for node in self.chain(event):
            if node.get("cat") != "user_annotation":
                continue
            if node["name"].startswith(PART_PREFIX):
                return node["name"][len(PART_PREFIX):]
            if node["name"].startswith(OPTIMIZER_SCOPES):
                return "optimizer"
        return UNANNOTATED

    def part_of(self, event: dict[str, Any]) -> tuple[str, str]:
        """(part, 'fwd' | 'bwd') of a host event: a backward node's part is its forward op's."""
        seq = self._backward_seq(event)
        if seq is None:
            return self._annotation(event), "fwd"
        forward = self.by_seq.get(seq) if isinstance(seq, int) else None
        return (self._annotation(forward) if forward is not None else UNLINKED), "bwd"


def gpu_ms_by_part(trace: dict[str, Any] | list[dict[str, Any]], steps: int) -> dict[str, float]:
    """GPU ms per step of each '<part>_fwd' / '<part>_bwd' (aggregation kernels as 'aggregation_*';
    'data', 'optimizer' and 'unlinked' whole), largest first, and 'total'. Kernels, copies and fills
    all count."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    scopes = HostScopes(events)
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") not in GPU_CATEGORIES or "dur" not in event:
            continue
        launch = launches.get(event.get("args", {}).get("correlation"))
        name, direction = scopes.part_of(launch) if launch is not None else (UNLINKED, "fwd")
        if event["name"].startswith(AGGREGATION_KERNELS):
            name = "aggregation"
        key = name if direction == "fwd" and name in WHOLE_PARTS else f"{name}_{direction}"
        totals[key] += event["dur"] / 1000 / max(steps, 1)
    result = {key: round(ms, 2) for key, ms in sorted(totals.items(), key=lambda kv: -kv[1])}
    result["total"] = round(sum(totals.values()), 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=2, help="training steps the trace covers (the result is per step)")
    args = parser.parse_args()
    return print_trace_analysis(args.trace, lambda trace: gpu_ms_by_part(trace, args.steps))


if __name__ == "__main__":
    raise SystemExit(main())
