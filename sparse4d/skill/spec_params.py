"""Spec fields that are inferred at launch instead of asked from the user (TAO's spec_params table).

The table says which key of which action is filled by which inference function; `infer_spec_params`
computes the values from the job's own folders and its parent job's artifacts. The planner uses it to
explain what will be filled in, and the job launcher uses it to fill the spec before `create_job`.
A key the user already set is never overwritten.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from sparse4d.errors import InputFileError, SpecError

from .checkpoints import select_checkpoint, select_parent_model
from .data_sources import join

ENCRYPTION_KEY_ENV = "SPARSE4D_ENCRYPTION_KEY"
EXPORT_ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class InferenceFunction:
    """One way of inferring a value, with the sentence that explains it."""

    name: str
    how: str


FUNCTIONS: dict[str, InferenceFunction] = {
    "output_dir": InferenceFunction("output_dir", "the job's results folder (<jobs root>/<job id>/results)"),
    "key": InferenceFunction("key", f"the encryption key from ${ENCRYPTION_KEY_ENV} (left out when unset; never printed)"),
    "parent_model": InferenceFunction(
        "parent_model",
        "the parent job's checkpoint: explicit epoch/step, else the highest model_epoch_XXX_step_YYYYY.pth "
        "(quantize/export parents: quantized_model_torchao.pth / .onnx where the action takes them); never *latest*"),
    "resume_model": InferenceFunction(
        "resume_model", "when resuming: the job's own (else the parent's) checkpoint chosen by the same rules"),
    "ptm_if_no_resume_model": InferenceFunction(
        "ptm_if_no_resume_model", "the pretrained model path, only when no resume checkpoint is set (empty is "
        "allowed for smoke runs)"),
    "create_onnx_file": InferenceFunction("create_onnx_file", f"<results_dir>/{EXPORT_ONNX_NAME}"),
}

# action -> spec key -> inference function name (TAO's `spec_params`, same keys).
SPEC_PARAMS: dict[str, dict[str, str]] = {
    "dataset_convert": {"results_dir": "output_dir"},
    "train": {
        "encryption_key": "key",
        "results_dir": "output_dir",
        "train.pretrained_model_path": "ptm_if_no_resume_model",
        "train.resume_training_checkpoint_path": "resume_model",
    },
    "evaluate": {"encryption_key": "key", "results_dir": "output_dir", "evaluate.checkpoint": "parent_model"},
    "export": {
        "encryption_key": "key",
        "results_dir": "output_dir",
        "export.checkpoint": "parent_model",
        "export.onnx_file": "create_onnx_file",
    },
    "inference": {"encryption_key": "key", "results_dir": "output_dir", "inference.checkpoint": "parent_model"},
    "quantize": {"encryption_key": "key", "results_dir": "output_dir", "quantize.model_path": "parent_model"},
}


def spec_params_for(action: str) -> dict[str, str]:
    if action not in SPEC_PARAMS:
        raise SpecError(f"unknown action {action!r}", hint=f"use one of: {', '.join(SPEC_PARAMS)}")
    return dict(SPEC_PARAMS[action])


def describe_spec_params(action: str) -> list[dict[str, str]]:
    """[{key, function, how}] for the plan and the SKILL.md table."""
    return [{"key": key, "function": fn, "how": FUNCTIONS[fn].how} for key, fn in spec_params_for(action).items()]


def _path_in(folder: str | None, name: str) -> str:
    if folder is None or name.startswith("/") or name.startswith("s3://"):
        return name
    return join(folder, name)


def infer_spec_params(
    action: str,
    *,
    results_dir: str,
    parent_artifacts: Iterable[str] | None = None,
    parent_results_dir: str | None = None,
    own_artifacts: Iterable[str] | None = None,
    own_results_dir: str | None = None,
    ptm: str | None = None,
    resume: bool = False,
    epoch: int | None = None,
    step: int | None = None,
    provided: Collection[str] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Values of the action's inferred spec keys, skipping keys in ``provided`` (the user's own).

    ``parent_artifacts``/``own_artifacts`` are names relative to ``parent_results_dir``/``own_results_dir``
    (absolute names are kept as they are). ``epoch``/``step`` pin the exact checkpoint.
    Raises InputFileError when a parent model is needed but cannot be found.
    """
    env = os.environ if env is None else env
    table = spec_params_for(action)
    out: dict[str, str] = {}
    resume_path: str | None = None
    for key, fn in table.items():
        if key in provided:
            if fn == "resume_model":
                resume_path = "user"  # the user's resume checkpoint also suppresses the PTM
            continue
        if fn == "output_dir":
            out[key] = results_dir
        elif fn == "key":
            if env.get(ENCRYPTION_KEY_ENV):
                out[key] = env[ENCRYPTION_KEY_ENV]
        elif fn == "parent_model":
            if parent_artifacts is None:
                raise InputFileError(f"{action} needs a model for {key}, but no parent job was given",
                                     key=key, hint=f"pass --parent-job-id <train job> or -o {key}=<path>")
            choice = select_parent_model(action, parent_artifacts, epoch=epoch, step=step)
            out[key] = _path_in(parent_results_dir, choice.name)
        elif fn == "resume_model":
            if not resume:
                continue
            own = list(own_artifacts or [])
            if own:
                choice, folder = select_checkpoint(own, epoch=epoch, step=step, where="this job"), own_results_dir
            elif parent_artifacts is not None:
                choice = select_checkpoint(parent_artifacts, epoch=epoch, step=step)
                folder = parent_results_dir
            else:
                raise InputFileError("resume was asked but there is no checkpoint to resume from",
                                     key=key, hint="pass --parent-job-id, or run without resume")
            resume_path = _path_in(folder, choice.name)
            out[key] = resume_path
        elif fn == "create_onnx_file":
            out[key] = join(results_dir, EXPORT_ONNX_NAME)
    ptm_key = next((k for k, fn in table.items() if fn == "ptm_if_no_resume_model"), None)
    if ptm_key and ptm_key not in provided and resume_path is None and ptm:
        out[ptm_key] = ptm
    return {key: out[key] for key in table if key in out}
