"""What the host was doing while the GPU sat idle: the longest idle stretches of a profiler trace.

A host-bound step shows up as GPU idle gaps; the kernel names around a gap rarely say why. This reads
a Chrome trace written by torch.profiler (`train_throughput.py --profile --trace t.json.gz`; record
with `with_stack=True` to get Python frames) and, for each long gap, follows the first kernel after
it back to the host call that launched it (the runtime event with the same correlation id), then
lists what that host thread was running during the gap (ops and Python frames that cover at least
a quarter of it, outermost first).

    python benchmarks/trace_gaps.py trace.json.gz [--top 8] [--min-ms 1.0]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from typing import Any, Callable

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
HOST_CATEGORIES = ("cpu_op", "user_annotation", "python_function")


def load_trace(path: str) -> dict[str, Any]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def explain_gaps(trace: dict[str, Any], top: int = 8, min_ms: float = 1.0) -> list[dict[str, Any]]:
    """The `top` longest GPU idle gaps of at least `min_ms`, longest first, each with the launch
    that ended it and the host work that covered it."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES and "dur" in e), key=lambda e: e["ts"])
    if not gpu:
        return []
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    host_by_thread: dict[Any, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") in HOST_CATEGORIES and "dur" in e:
            host_by_thread[e["tid"]].append(e)
    origin = gpu[0]["ts"]
    gaps = []
    busy_until = gpu[0]["ts"] + gpu[0]["dur"]
    for e in gpu[1:]:
        if e["ts"] - busy_until >= min_ms * 1000:
            gaps.append((busy_until, e))
        busy_until = max(busy_until, e["ts"] + e["dur"])
    gaps.sort(key=lambda g: g[0] - g[1]["ts"])  # longest first
    return [_explain(start, after, launches, host_by_thread, origin) for start, after in gaps[:top]]


def _explain(start: float, after: dict, launches: dict, host_by_thread: dict, origin: float) -> dict[str, Any]:
    end = after["ts"]
    gap = end - start
    row: dict[str, Any] = {"ms": round(gap / 1000, 2), "at_ms": round((start - origin) / 1000, 2), "gpu_after": after["name"][:80]}
    launch = launches.get(after.get("args", {}).get("correlation"))
    if launch is None:
        return row
    row["launch"] = launch["name"]
    row["launched_ms_after_gpu_idle"] = round((launch["ts"] - start) / 1000, 2)
    host = host_by_thread.get(launch["tid"], [])
    covering = [e for e in host if e["ts"] <= launch["ts"] <= e["ts"] + e["dur"]]
    row["launched_from"] = [e["name"][:90] for e in sorted(covering, key=lambda e: (e["ts"], -e["dur"]))][-12:]
    window_start, window_end = start, min(end, launch["ts"])
    during = []
    for e in host:
        overlap = min(e["ts"] + e["dur"], window_end) - max(e["ts"], window_start)
        if overlap >= 0.25 * max(window_end - window_start, 1):
            during.append((e["ts"], -e["dur"], e["name"][:90], round(overlap / 1000, 2)))
    row["host_during_gap"] = [[name, ms] for _, _, name, ms in sorted(during)][:16]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--min-ms", type=float, default=1.0)
    args = parser.parse_args()
    return print_trace_analysis(args.trace, lambda trace: explain_gaps(trace, args.top, args.min_ms))


def print_trace_analysis(path: str, analyse: Callable[[dict[str, Any]], Any]) -> int:
    """The command-line end of a trace script: analyse the trace at `path` and print the result as
    JSON (exit 0), or say why the trace cannot be read (exit 2)."""
    try:
        trace = load_trace(path)
    except (OSError, ValueError) as exc:
        print(f"cannot read trace {path}: {exc}", file=sys.stderr)
        return 2
    json.dump(analyse(trace), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
