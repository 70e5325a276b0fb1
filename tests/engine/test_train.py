"""Training end to end on tiny synthetic data: checkpoints, status.json, exact resume."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from .conftest import make_spec, tiny_overrides
from sparse4d.engine.checkpoint import LATEST_NAME, list_checkpoints
from sparse4d.engine.train import run_train
from sparse4d.jobs.status_file import latest_metric, read_events


def step_losses(results_dir: Path) -> dict[int, float]:
    """Per optimizer step train_loss from the CSV logger (step numbers are this process's)."""
    losses = {}
    for metrics in results_dir.glob("logs/version_*/metrics.csv"):
        with metrics.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train_loss"):
                    losses[int(row["step"])] = float(row["train_loss"])
    return losses


def test_checkpoints_status_and_kpis(trained: Path) -> None:
    names = [p.name for _, _, p in list_checkpoints(trained)]
    assert names == ["model_epoch_001_step_00004.pth", "model_epoch_002_step_00008.pth"]  # 8 frames, 2 slots -> 4 steps
    assert (trained / LATEST_NAME).read_bytes() == (trained / names[-1]).read_bytes()
    checkpoint = torch.load(trained / names[0], weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 4
    assert checkpoint["classes"] == ["person", "gr1_t2", "agility_digit", "nova_carter"]
    assert "encryption_key" not in checkpoint["spec"] and checkpoint["spec"]["train"]["num_epochs"] == 2
    assert {"optimizer", "lr_scheduler", "rng", "state_dict"} <= set(checkpoint)
    events = read_events(trained / "status.json")
    assert [e["status"] for e in events] == ["STARTED", "RUNNING", "RUNNING", "SUCCESS"]
    for event in events[1:3]:
        kpi = event["kpi"]
        assert {"val_mAP", "mAP", "img_bbox_NuScenes/mAP", "NDS", "loss"} <= set(kpi)
        assert kpi["val_mAP"] == kpi["mAP"] == kpi["img_bbox_NuScenes/mAP"]
        assert 0.0 <= kpi["val_mAP"] <= 1.0
    assert latest_metric(trained / "status.json") == events[-1]["kpi"]["val_mAP"]
    assert not list(trained.glob(".*tmp"))  # no temporary files left behind


def test_resume_after_a_checkpoint_repeats_the_uninterrupted_losses(trained: Path, converted, tmp_path: Path) -> None:
    # The uninterrupted run wrote the epoch-1 checkpoint, then trained epoch 2 (steps 4..7).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    start = resumed / "start.pth"
    shutil.copy(trained / "model_epoch_001_step_00004.pth", start)  # as if the run had been killed here
    run_train(make_spec("train", tiny_overrides(converted, resumed, **{"dataset.batch_size": 2,
                                                                     "train.resume_training_checkpoint_path": str(start)})))
    full, again = step_losses(trained), step_losses(resumed)
    assert sorted(again) == [0, 1, 2, 3]
    for step in range(4):
        assert again[step] == pytest.approx(full[4 + step], rel=1e-5, abs=1e-6), step
    names = [p.name for _, _, p in list_checkpoints(resumed)]
    assert names == ["model_epoch_002_step_00008.pth"]
    final_a = torch.load(trained / "model_epoch_002_step_00008.pth", weights_only=True)["state_dict"]
    final_b = torch.load(resumed / names[0], weights_only=True)["state_dict"]
    for name, value in final_a.items():
        torch.testing.assert_close(final_b[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_step_checkpoints_and_mid_epoch_resume(converted, tmp_path: Path) -> None:
    every3 = {"dataset.batch_size": 2, "train.checkpoint_interval_unit": "step", "train.checkpoint_interval": 3}
    run_train(make_spec("train", tiny_overrides(converted, tmp_path / "a", **every3)))
    names = [p.name for _, _, p in list_checkpoints(tmp_path / "a")]
    # steps 3 and 6 fall inside epochs (epoch = completed epochs), 8 is the end of the run
    assert names == ["model_epoch_000_step_00003.pth", "model_epoch_001_step_00006.pth", "model_epoch_002_step_00008.pth"]
    assert torch.load(tmp_path / "a" / names[1], weights_only=True)["batches_in_epoch"] == 2
    run_train(make_spec("train", tiny_overrides(converted, tmp_path / "b", **every3,
                                                **{"train.resume_training_checkpoint_path": str(tmp_path / "a" / names[1])})))
    assert [p.name for _, _, p in list_checkpoints(tmp_path / "b")] == ["model_epoch_002_step_00008.pth"]
    assert sorted(step_losses(tmp_path / "b")) == [0, 1]  # only the two batches left in epoch 2 were trained
