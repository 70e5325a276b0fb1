"""Shared fixtures: a jobs root whose train jobs run tests/automl/fake_trainer.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_trainer_env(monkeypatch, tmp_path):
    """Jobs run the fake trainer; returns the launch log every trainer run appends to."""
    launch_log = tmp_path / "launches.log"
    monkeypatch.setenv("SPARSE4D_TRAINER", f"{sys.executable} {FAKE_TRAINER}")
    monkeypatch.setenv("FAKE_LAUNCH_LOG", str(launch_log))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("FAKE_NO_METRIC_ON_RESUME", raising=False)
    monkeypatch.delenv("FAKE_BAD_CHECKPOINT", raising=False)
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    return launch_log


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"num_epochs": 4, "num_gpus": 1, "gpu_ids": [0], "pretrained_model_path": "/models/pretrained.pth"},
        "dataset": {"data_root": "/data/train", "batch_size": 1},
    }))
    return path
