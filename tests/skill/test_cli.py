"""`runner policy` / `runner plan`: one JSON document on stdout, documented exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparse4d.skill.cli import plan, policy

REPO = Path(__file__).resolve().parents[2]
SCENE = "subsetscene+bev-sensor-random-0"


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "aicity"
    for split in ("train", "val", "test"):
        (data / split).mkdir(parents=True)
    conv = tmp_path / "conv"
    for split in ("train", "val", "test"):
        (conv / split).mkdir(parents=True)
        (conv / split / f"{SCENE}_infos_{split}.pkl").write_bytes(b"x")
    (conv / "anchor_init.npy").write_bytes(b"x")
    parent = tmp_path / "train_results"
    parent.mkdir()
    for name in ("model_epoch_000_step_00004.pth", "model_epoch_001_step_00008.pth", "model_latest.pth"):
        (parent / name).write_bytes(b"x")
    return {"data": data, "conv": conv, "parent": parent}


def _invoke(command, args: list[str]):
    result = CliRunner().invoke(command, args)
    return result.exit_code, result.stdout


def test_policy_json() -> None:
    code, out = _invoke(policy, ["--request", "train Sparse4D, no HPO", "--json", "--skill-dir", str(REPO)])
    doc = json.loads(out)
    assert code == 0 and doc["policy"] == "off" and doc["route"] == "direct" and doc["ok"]


def test_policy_rejects_other_values() -> None:
    code, _ = _invoke(policy, ["--automl-policy", "auto", "--json"])
    assert code == 2  # click usage error: only on/off


def test_plan_train_json(layout: dict[str, Path]) -> None:
    code, out = _invoke(plan, ["train", "--request", "train Sparse4D, plain training", "--train-root",
                               str(layout["data"]), "--eval-root", str(layout["data"]), "--convert-dir",
                               str(layout["conv"]), "-o", "train.num_epochs=2", "--skill-dir", str(REPO), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "ready" and doc["route"] == "direct"
    assert doc["spec_overrides"]["dataset.data_root"] == f"{layout['data']}/train"
    assert doc["spec_overrides"]["train.num_epochs"] == "2"
    assert doc["command"][:2] == ["sparse4d", "train"]


def test_plan_evaluate_with_parent_dir(layout: dict[str, Path]) -> None:
    code, out = _invoke(plan, ["evaluate", "--request", "evaluate Sparse4D", "--eval-root", str(layout["data"]),
                               "--convert-dir", str(layout["conv"]), "--parent-dir", str(layout["parent"]),
                               "--epoch", "1", "--skill-dir", str(REPO), "--json"])
    doc = json.loads(out)
    params = {p["key"]: p["value"] for p in doc["spec_params"]}
    assert code == 0
    assert params["evaluate.checkpoint"] == f"{layout['parent']}/model_epoch_001_step_00008.pth"
    assert doc["parent"]["epoch"] == 1


@pytest.mark.parametrize(("args", "code"), [
    (["train", "--request", "train Sparse4D", "--convert-dir", "CONV"], 4),  # no train root
    (["evaluate", "--request", "evaluate Sparse4D", "--eval-root", "DATA", "--convert-dir", "CONV"], 4),  # no parent
    (["train", "--request", "train Sparse4D", "--train-root", "DATA", "--eval-root", "DATA", "--convert-dir", "CONV",
      "-o", "nosuch.key=1"], 3),
    (["train", "--request", "train Sparse4D", "--train-root", "DATA", "--convert-dir", "CONV", "-o", "no-equals"], 3),
    (["train", "--request", "train BEVFusion on nuScenes"], 3),
    (["train", "--epoch", "-1"], 2),
    (["deploy"], 2),
])
def test_plan_exit_codes(layout: dict[str, Path], args: list[str], code: int) -> None:
    args = [a.replace("CONV", str(layout["conv"])).replace("DATA", str(layout["data"])) for a in args]
    got, out = _invoke(plan, args + ["--skill-dir", str(REPO), "--json"])
    assert got == code
    if code != 2:  # usage errors are click's; everything else is one JSON document
        doc = json.loads(out)
        if doc.get("status") == "not_this_skill":
            assert doc["skill"] is None and "bevfusion" in doc["reason"]
        else:
            assert doc["ok"] is False and doc["exit_code"] == code and doc["error"]["message"]


def test_convert_first_is_ok_with_instructions(layout: dict[str, Path]) -> None:
    code, out = _invoke(plan, ["export", "--request", "export Sparse4D to ONNX", "--skill-dir", str(REPO), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "needs_dataset_convert"
    assert doc["prerequisites"][0]["action"] == "dataset_convert"


def test_runner_mounts_the_commands_and_logs_go_to_stderr(layout: dict[str, Path]) -> None:
    if not (REPO / "sparse4d" / "cli" / "runner.py").is_file():
        pytest.skip("runner CLI not present")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", "from sparse4d.cli.runner import main; main()", "plan", "train", "--request",
         "train Sparse4D, no HPO", "--train-root", str(layout["data"]), "--eval-root", str(layout["data"]),
         "--convert-dir", str(layout["conv"]), "-o", "dataset.data_root=/elsewhere", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document
    assert doc["spec_overrides"]["dataset.data_root"] == "/elsewhere"
    assert "warning: dataset.data_root" in proc.stderr
