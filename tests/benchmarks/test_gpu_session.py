"""Every command of benchmarks/gpu_session.sh parses on the CPU.

A GPU session is 30 minutes: an option a script does not know, or a stage that calls a missing
script, must fail here, not there. The script's dry run lists each stage's commands; each is run on
the CPU, where a script that parsed its options stops with "needs a CUDA GPU" (exit 2). What a
script does after that check is for its own tests (e.g. ddp_scaling's option plumbing).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["warm", "kernel", "train", "ab --graphed-optimizer", "ab --losses-without-graphs", "ab-toggle denoising-costs graphed-optimizer", "ab --anchor-encoder branches",
          "ab-toggle anchor-encoder", "ab-toggle denoising-costs anchor-encoder", "trainer-ab --graphed-optimizer",
          "host-sample switch-interval solver-workers", "host-sample", "host-sample losses-graphs",
          "ab --inductor combo_kernels=True", "ab --no-combo-kernels", "ab --gradient-sink"]


def planned_commands(stage: str, tmp_path: Path) -> list[list[str]]:
    listing = tmp_path / "commands.txt"
    env = {**os.environ, "GPU_SESSION_DRY_RUN": str(listing), "OUT": str(tmp_path / "out")}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), *stage.split()], cwd=ROOT, env=env, check=True)
    return [shlex.split(line) for line in listing.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("stage", STAGES)
def test_each_planned_command_parses_and_asks_for_a_gpu(stage: str, tmp_path: Path) -> None:
    commands = planned_commands(stage, tmp_path)
    assert commands and all(c[0] == "python3" and c[1].startswith("benchmarks/") for c in commands)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    for command in commands:
        run = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and "needs a CUDA GPU" in run.stderr, (command, run.stderr[-2000:])


def test_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "tran"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path)})
    assert run.returncode == 2 and "unknown stage tran" in run.stderr
