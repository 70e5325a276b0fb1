"""Train with automl_policy on (the default) routes to the local AutoML; 'no HPO' trains directly."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sparse4d.cli.launch import LaunchRequest, launch

FAKE_TRAINER = Path(__file__).resolve().parents[1] / "automl" / "fake_trainer.py"


@pytest.fixture()
def converted(tmp_path: Path) -> dict[str, str]:
    conv = tmp_path / "converted"
    for split in ("train", "val", "test"):
        (conv / split).mkdir(parents=True)
        (conv / split / f"scene+bev-sensor-random-0_infos_{split}.pkl").write_bytes(b"")
    np.save(conv / "anchor_init.npy", np.zeros((900, 11), dtype=np.float32))
    root = tmp_path / "aicity"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
    return {"convert_dir": str(conv), "root": str(root)}


def _request(converted: dict[str, str], tmp_path: Path, **kw) -> LaunchRequest:
    roots = {"train_datasets": converted["root"], "eval_dataset": converted["root"], "inference_dataset": converted["root"]}
    return LaunchRequest("train", roots=roots, convert_dir=converted["convert_dir"], jobs_root=str(tmp_path / "jobs"), overrides=["train.num_epochs=3", "train.validation_interval=1"], **kw)


def test_default_policy_routes_train_to_automl(converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE4D_TRAINER", f"{sys.executable} {FAKE_TRAINER}")
    req = _request(converted, tmp_path, request="train Sparse4D on my warehouse data")
    dry = launch(req, dry_run=True)
    assert dry["route"] == "tao-skill-bank:tao-run-automl" and dry["automl"]["monitor"] == "val_mAP"
    doc = launch(req, wait=True)
    assert doc["study"].startswith("train-") and doc["best"]["job_id"]
    assert doc["best"]["checkpoint"].endswith(".pth") and "latest" not in doc["best"]["checkpoint"]
    spec_text = (tmp_path / "jobs" / doc["best"]["job_id"] / "spec.yaml").read_text()
    assert converted["convert_dir"] in spec_text  # the user's data sources are preserved in trials


def test_no_hpo_phrase_trains_directly(converted, tmp_path: Path) -> None:
    doc = launch(_request(converted, tmp_path, request="plain training of Sparse4D, no HPO"), dry_run=True)
    assert doc["route"] == "direct" and doc["valid"]
