"""benchmarks/trace_gaps.py follows a GPU idle gap back to the host call that ended it."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from trace_gaps import explain_gaps  # noqa: E402


def _trace() -> dict:
    """GPU: kernel a (0-100 us), kernel b (3100-3200 us), kernel c (3300-3400 us): one 3 ms gap.
    Host thread 7: a Python frame covering the gap, a slow op inside it, then the launch of b."""
    return {"traceEvents": [
        {"cat": "kernel", "name": "a", "ts": 0, "dur": 100, "args": {"correlation": 1}},
        {"cat": "kernel", "name": "b", "ts": 3100, "dur": 100, "args": {"correlation": 2}},
        {"cat": "kernel", "name": "c", "ts": 3300, "dur": 100, "args": {"correlation": 3}},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 50, "dur": 5, "tid": 7, "args": {"correlation": 1}},
        {"cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 3050, "dur": 20, "tid": 7, "args": {"correlation": 2}},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 3080, "dur": 5, "tid": 7, "args": {"correlation": 3}},
        {"cat": "python_function", "name": "model.py(10): forward", "ts": 0, "dur": 3500, "tid": 7},
        {"cat": "python_function", "name": "trees.py(5): check_invariants", "ts": 200, "dur": 2700, "tid": 7},
        {"cat": "cpu_op", "name": "aten::tiny", "ts": 2950, "dur": 10, "tid": 7},
        {"cat": "cpu_op", "name": "replay", "ts": 3000, "dur": 90, "tid": 7},
        {"cat": "cpu_op", "name": "other thread", "ts": 100, "dur": 3000, "tid": 8},
    ]}


def test_the_gap_is_traced_to_its_launch_and_the_host_work_during_it() -> None:
    [gap] = explain_gaps(_trace(), top=5, min_ms=1.0)
    assert gap["ms"] == 3.0 and gap["at_ms"] == 0.1 and gap["gpu_after"] == "b"
    assert gap["launch"] == "cudaGraphLaunch" and gap["launched_ms_after_gpu_idle"] == 2.95
    assert gap["launched_from"] == ["model.py(10): forward", "replay"]
    # what covered the gap on the launching thread, outermost first; short ops and other threads left out
    assert gap["host_during_gap"] == [["model.py(10): forward", 2.95], ["trees.py(5): check_invariants", 2.7]]


def test_short_gaps_are_ignored_and_the_script_reads_gzip(tmp_path: Path) -> None:
    assert explain_gaps(_trace(), min_ms=5.0) == []
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(_trace(), fh)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_gaps.py"), str(path)], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)[0]["gpu_after"] == "b"
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_gaps.py"), str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read trace" in bad.stderr
