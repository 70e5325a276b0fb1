"""Spec-param inference: results_dir, key, parent_model, resume_model, PTM, ONNX file."""
from __future__ import annotations

import pytest
import yaml

from sparse4d.errors import InputFileError
from sparse4d.skill.spec_params import ENCRYPTION_KEY_ENV, SPEC_PARAMS, describe_spec_params, infer_spec_params

CKPTS = ["model_epoch_000_step_00005.pth", "model_epoch_001_step_00010.pth", "model_latest.pth"]
TAO_SKILL_INFO = "/work/shared/reference/tao-skill-bank-sparse4d/skill_info.yaml"


def test_table_matches_tao() -> None:
    try:
        with open(TAO_SKILL_INFO, encoding="utf-8") as fh:
            tao = yaml.safe_load(fh)["spec_params"]
    except OSError:
        pytest.skip("TAO reference skill_info.yaml not available on this machine")
    assert SPEC_PARAMS == tao


@pytest.mark.parametrize(("action", "key"), [
    ("evaluate", "evaluate.checkpoint"), ("inference", "inference.checkpoint"),
    ("export", "export.checkpoint"), ("quantize", "quantize.model_path"),
])
def test_parent_model_is_the_exact_checkpoint(action: str, key: str) -> None:
    out = infer_spec_params(action, results_dir="/jobs/e/results", parent_artifacts=CKPTS,
                            parent_results_dir="/jobs/t/results", env={})
    assert out[key] == "/jobs/t/results/model_epoch_001_step_00010.pth"
    assert out["results_dir"] == "/jobs/e/results"
    assert "encryption_key" not in out
    pinned = infer_spec_params(action, results_dir="r", parent_artifacts=CKPTS, parent_results_dir="/p",
                               epoch=0, env={})
    assert pinned[key] == "/p/model_epoch_000_step_00005.pth"


def test_missing_parent_is_an_error_unless_the_user_set_the_key() -> None:
    with pytest.raises(InputFileError, match="no parent job"):
        infer_spec_params("evaluate", results_dir="r", env={})
    out = infer_spec_params("evaluate", results_dir="r", provided={"evaluate.checkpoint"}, env={})
    assert out == {"results_dir": "r"}


def test_export_creates_an_onnx_path() -> None:
    out = infer_spec_params("export", results_dir="/jobs/x/results", parent_artifacts=CKPTS,
                            parent_results_dir="/p", env={})
    assert out["export.onnx_file"] == "/jobs/x/results/model.onnx"


def test_train_ptm_only_without_resume() -> None:
    out = infer_spec_params("train", results_dir="r", ptm="/ptm/resnet101.pth", env={})
    assert out == {"results_dir": "r", "train.pretrained_model_path": "/ptm/resnet101.pth"}
    resumed = infer_spec_params("train", results_dir="r", ptm="/ptm/resnet101.pth", resume=True,
                                parent_artifacts=CKPTS, parent_results_dir="/p", epoch=1, step=10, env={})
    assert resumed["train.resume_training_checkpoint_path"] == "/p/model_epoch_001_step_00010.pth"
    assert "train.pretrained_model_path" not in resumed
    user_resume = infer_spec_params("train", results_dir="r", ptm="/ptm.pth",
                                    provided={"train.resume_training_checkpoint_path"}, env={})
    assert "train.pretrained_model_path" not in user_resume


def test_resume_prefers_own_checkpoints() -> None:
    out = infer_spec_params("train", results_dir="/own", resume=True, own_artifacts=["model_epoch_004_step_00040.pth"],
                            own_results_dir="/own", parent_artifacts=CKPTS, parent_results_dir="/p", env={})
    assert out["train.resume_training_checkpoint_path"] == "/own/model_epoch_004_step_00040.pth"
    with pytest.raises(InputFileError):
        infer_spec_params("train", results_dir="r", resume=True, env={})


def test_encryption_key_comes_from_the_environment_only() -> None:
    out = infer_spec_params("dataset_convert", results_dir="r", env={ENCRYPTION_KEY_ENV: "k"})
    assert out == {"results_dir": "r"}
    out = infer_spec_params("train", results_dir="r", env={ENCRYPTION_KEY_ENV: "secret"})
    assert out["encryption_key"] == "secret"


def test_describe_lists_every_key() -> None:
    for action, table in SPEC_PARAMS.items():
        assert [d["key"] for d in describe_spec_params(action)] == list(table)
