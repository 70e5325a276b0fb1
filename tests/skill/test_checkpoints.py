"""Checkpoint selection over artifact listings: exact epoch/step, zero-indexed epochs, never *latest*."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse4d.errors import InputFileError, SpecError
from sparse4d.skill.checkpoints import (
    QUANTIZED_NAME,
    checkpoint_name,
    parse_checkpoint,
    select_checkpoint,
    select_parent_model,
)

TRAIN_RESULTS = [
    "model_epoch_000_step_00010.pth",
    "model_epoch_001_step_00020.pth",
    "model_epoch_002_step_00025.pth",
    "model_epoch_002_step_00030.pth",
    "model_latest.pth",
    "status.json",
    "lightning_logs/version_0/events.out",
]


def test_default_is_highest_epoch_then_step_not_latest() -> None:
    choice = select_checkpoint(TRAIN_RESULTS)
    assert (choice.name, choice.epoch, choice.step) == ("model_epoch_002_step_00030.pth", 2, 30)


def test_explicit_epoch_and_step_win() -> None:
    assert select_checkpoint(TRAIN_RESULTS, epoch=1).name == "model_epoch_001_step_00020.pth"
    assert select_checkpoint(TRAIN_RESULTS, epoch=2, step=25).name == "model_epoch_002_step_00025.pth"
    assert select_checkpoint(TRAIN_RESULTS, step=10).name == "model_epoch_000_step_00010.pth"


def test_zero_indexed_epoch_falls_back_to_n_minus_1_with_a_warning() -> None:
    choice = select_checkpoint(TRAIN_RESULTS, epoch=3)
    assert choice.name == "model_epoch_002_step_00030.pth"
    assert choice.warnings and "zero-indexed" in choice.warnings[0]
    assert select_checkpoint(TRAIN_RESULTS, epoch=3, step=25).name == "model_epoch_002_step_00025.pth"


def test_exact_epoch_beats_the_shift() -> None:
    choice = select_checkpoint(TRAIN_RESULTS, epoch=2)
    assert choice.epoch == 2 and not choice.warnings


@pytest.mark.parametrize(("epoch", "step"), [(7, None), (2, 99), (None, 11), (3, 20)])
def test_explicit_request_never_uses_latest(epoch, step) -> None:
    with pytest.raises(InputFileError) as err:
        select_checkpoint(TRAIN_RESULTS, epoch=epoch, step=step)
    assert "latest" not in err.value.message  # never offered as the answer
    assert "epoch 2 step 30" in err.value.message  # lists what exists


def test_only_latest_is_an_error_not_a_silent_pick() -> None:
    with pytest.raises(InputFileError, match="latest"):
        select_checkpoint(["model_latest.pth", "status.json"])
    with pytest.raises(InputFileError):
        select_checkpoint([])


def test_latest_named_like_a_checkpoint_is_still_skipped() -> None:
    names = ["model_epoch_001_step_00010.pth", "model_epoch_009_step_00090_latest.pth", "latest_epoch_009.pth"]
    assert select_checkpoint(names).name == "model_epoch_001_step_00010.pth"
    # Only the file name counts: a folder called "latest-run" above the results does not hide checkpoints.
    assert select_checkpoint(["/jobs/latest-run/results/model_epoch_003_step_00030.pth"]).epoch == 3


def test_paths_are_kept_as_listed() -> None:
    names = ["/jobs/t/results/model_epoch_004_step_00040.pth", "s3://b/r/model_epoch_010_step_00100.pth"]
    assert select_checkpoint(names).name == "s3://b/r/model_epoch_010_step_00100.pth"


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_epoch_values(bad) -> None:
    with pytest.raises(SpecError):
        select_checkpoint(TRAIN_RESULTS, epoch=bad)


def test_parent_model_per_action() -> None:
    quantize_results = [QUANTIZED_NAME, "status.json"]
    export_results = ["model.onnx", "status.json"]
    assert select_parent_model("evaluate", quantize_results).kind == "quantized"
    assert select_parent_model("inference", quantize_results).name == QUANTIZED_NAME
    assert select_parent_model("inference", export_results).name == "model.onnx"
    with pytest.raises(InputFileError, match="needs a .pth"):
        select_parent_model("export", export_results)
    with pytest.raises(InputFileError, match="needs a .pth"):
        select_parent_model("evaluate", export_results)
    assert select_parent_model("quantize", TRAIN_RESULTS).name == "model_epoch_002_step_00030.pth"
    assert select_parent_model("export", TRAIN_RESULTS, epoch=1).name == "model_epoch_001_step_00020.pth"
    with pytest.raises(SpecError):
        select_parent_model("dataset_convert", TRAIN_RESULTS)
    with pytest.raises(SpecError, match="several ONNX"):
        select_parent_model("inference", ["a.onnx", "b.onnx"])


def test_explicit_epoch_on_a_mixed_parent_uses_the_numbered_checkpoint() -> None:
    mixed = TRAIN_RESULTS + [QUANTIZED_NAME]
    assert select_parent_model("evaluate", mixed, epoch=1).name == "model_epoch_001_step_00020.pth"


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 99999)), min_size=1, max_size=30))
def test_default_choice_is_the_maximum(pairs) -> None:
    names = [checkpoint_name(e, s) for e, s in pairs] + ["model_latest.pth"]
    choice = select_checkpoint(names)
    assert (choice.epoch, choice.step) == max(pairs)
    assert parse_checkpoint(choice.name) == max(pairs)
