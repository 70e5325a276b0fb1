"""benchmarks/host_samples.py: py-spy's raw samples -> the main thread's time per timed block."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import host_samples  # noqa: E402

STEP = "train_step (train_throughput.py:{})"
RAW = "\n".join([
    # the timed block (main line 700): forward at two lines of Sparse4D.forward, then the backward
    "thread (11): MainThread;<module> (train_throughput.py:900);main (train_throughput.py:700);timed_block (train_throughput.py:650);"
    + STEP.format(610) + ";_call_impl (torch/nn/modules/module.py:1784);forward (sparse4d/model/sparse4d.py:390);draw (sparse4d/model/grid_mask.py:33) 30",
    "thread (11): MainThread;<module> (train_throughput.py:900);main (train_throughput.py:700);timed_block (train_throughput.py:650);"
    + STEP.format(610) + ";_call_impl (torch/nn/modules/module.py:1784);forward (sparse4d/model/sparse4d.py:400);0x7f00 (libtorch.so) 10",
    "thread (11): MainThread;<module> (train_throughput.py:900);main (train_throughput.py:700);main.<locals>.timed_block (train_throughput.py:650);"
    + STEP.format(620) + ";backward (torch/_tensor.py:630) 60",
    # an --ab block (main line 760), and samples outside any timed block (compilation)
    "thread (11): MainThread;<module> (train_throughput.py:900);main (train_throughput.py:760);timed_block (train_throughput.py:650);"
    + STEP.format(620) + ";backward (torch/_tensor.py:630) 12",
    "thread (11): MainThread;<module> (train_throughput.py:900);main (train_throughput.py:640);compile (torch/_inductor/compile_fx.py:10) 500",
    "thread (12): hungarian_3;_worker (concurrent/futures/thread.py:90);weighted_l1_costs (sparse4d/model/denoising.py:165) 7",
    "thread (13);_bootstrap (threading.py:1000) 1",
])


def test_blocks_phases_and_own_frames_are_counted() -> None:
    samples, skipped = host_samples.parse_raw(RAW + "\nthread (11): MainThread;main (train_throughput.py:700);cut off (x.py:1")
    assert skipped == 1
    summary = host_samples.summarize(samples, rate=100.0, steps=2, top=10)
    timed, ab = summary["blocks"]
    assert timed["called_at"].startswith("main (train_throughput.py:700)") and ab["called_at"].startswith("main (train_throughput.py:760)")
    assert timed["samples"] == 100 and ab["samples"] == 12
    assert timed["ms_per_step"] == 500.0  # 100 samples at 100 Hz over 2 steps
    phases = {row["where"].split("  ")[0]: row["percent"] for row in timed["by_phase"]}
    assert phases == {STEP.format(620): 60.0, STEP.format(610): 40.0}
    own = {row["where"].split("  ")[0]: row["ms_per_step"] for row in timed["by_innermost_own_frame"]}
    assert own["draw (sparse4d/model/grid_mask.py:33)"] == 150.0
    assert own["forward (sparse4d/model/sparse4d.py:400)"] == 50.0  # the native leaf has no file: the own frame above it
    lines = {row["where"].split("  ")[0]: row["percent"] for row in timed["in_sparse4d_forward_by_line"]}
    assert lines == {"forward (sparse4d/model/sparse4d.py:390)": 30.0, "forward (sparse4d/model/sparse4d.py:400)": 10.0}
    assert summary["samples_by_thread_whole_run"] == {"MainThread": 612, "hungarian": 7, "?": 1}


def test_a_sample_split_by_a_line_break_is_skipped_and_a_recording_without_threads_refused() -> None:
    split = "thread (11): MainThread;main (train_throughput.py:700);<lambda> (<string\n>:1);f (y.py:2) 4"
    samples, skipped = host_samples.parse_raw(RAW + "\n" + split)
    assert skipped == 2 and sum(sample.count for sample in samples) == 620  # both pieces dropped, nothing else
    with pytest.raises(ValueError, match="none of 2 lines starts with 'thread"):
        host_samples.parse_raw("main (x.py:1);f (y.py:2) 3\nmain (x.py:1) 1")


def test_the_cli_names_a_missing_file(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_samples.py"), str(tmp_path / "none.txt")], capture_output=True, text=True)
    assert run.returncode == 2 and "none.txt does not exist" in run.stderr
