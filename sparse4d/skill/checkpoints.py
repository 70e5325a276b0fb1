"""Pick the exact checkpoint a job hands to the next one, from a listing of artifact names.

Pure functions over names (no disk access), so the same rules serve local folders, s3 listings and
tests. The rules:

1. An explicit epoch and/or step wins and never falls back to a ``*latest*`` file: a resumed or
   evaluated model must be the one the user named, and "latest" is overwritten while training runs.
2. Zero-indexed epochs: this package's trainer numbers a file by *completed* epochs (the file written
   after the 3rd epoch says ``epoch_003``), but trainers that count from 0 (Lightning's
   ``current_epoch``) write ``epoch_002`` for the same point. When epoch N is asked and no file carries
   epoch N, the file with epoch N-1 (and the same step, when a step was asked) is used and the choice
   carries a warning. An exact match always wins.
3. Without epoch/step: the highest (epoch, step) ``model_epoch_XXX_step_YYYYY.pth``; ``*latest*``
   files are never chosen.
4. Parents of export/quantize jobs: inference and evaluate take the parent's
   ``quantized_model_torchao.pth`` (quantize parent) and inference takes its ``.onnx`` (export parent)
   when no epoch/step is asked; otherwise the numbered ``.pth`` rules apply.
5. Nothing matching is an error that lists what exists.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sparse4d.errors import InputFileError, SpecError

CHECKPOINT_RE = re.compile(r"^model_epoch_(\d+)_step_(\d+)\.pth$")
QUANTIZED_NAME = "quantized_model_torchao.pth"
CHECKPOINT_PATTERN = "model_epoch_{epoch:03d}_step_{step:05d}.pth"

# What each action accepts as its parent model, in order of preference when no epoch/step is asked.
ACCEPTED_KINDS: dict[str, tuple[str, ...]] = {
    "evaluate": ("quantized", "pth"),
    "inference": ("quantized", "onnx", "pth"),
    "export": ("pth",),
    "quantize": ("pth",),
    "train": ("pth",),  # resume and AutoML promotions
}


@dataclass(frozen=True)
class CheckpointChoice:
    """The chosen artifact (as listed) and why it was chosen."""

    name: str
    kind: str  # pth, onnx or quantized
    epoch: int | None = None
    step: int | None = None
    reason: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)


def checkpoint_name(epoch: int, step: int) -> str:
    return CHECKPOINT_PATTERN.format(epoch=epoch, step=step)


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def parse_checkpoint(name: str) -> tuple[int, int] | None:
    """(epoch, step) of a numbered checkpoint name or path, else None."""
    match = CHECKPOINT_RE.match(_basename(name))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _numbered(artifacts: Iterable[str]) -> list[tuple[int, int, str]]:
    out = []
    for name in artifacts:
        if "latest" in _basename(name).lower():
            continue
        parsed = parse_checkpoint(name)
        if parsed:
            out.append((parsed[0], parsed[1], name))
    return sorted(out)


def _describe(numbered: list[tuple[int, int, str]]) -> str:
    return ", ".join(f"epoch {e} step {s}" for e, s, _ in numbered) or "none"


def _check_index(value: int | None, key: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise SpecError(f"{value!r} is not a valid {key}", key=key, hint="use a whole number >= 0")


def select_checkpoint(artifacts: Iterable[str], *, epoch: int | None = None, step: int | None = None,
                      where: str = "the parent job") -> CheckpointChoice:
    """The numbered ``.pth`` checkpoint to use (rules 1-3 and 5 of the module docstring)."""
    _check_index(epoch, "epoch")
    _check_index(step, "step")
    artifacts = list(artifacts)
    numbered = _numbered(artifacts)
    latest = [a for a in artifacts if "latest" in _basename(a).lower()]
    if epoch is None and step is None:
        if not numbered:
            hint = "pass the checkpoint path explicitly"
            if latest:
                hint = f"only {', '.join(latest)} exists; a *latest* file is never picked automatically, {hint}"
            raise InputFileError(f"{where} has no model_epoch_XXX_step_YYYYY.pth checkpoint", key="checkpoint", hint=hint)
        e, s, name = numbered[-1]
        return CheckpointChoice(name, "pth", e, s, "highest epoch/step checkpoint")

    def matching(want_epoch: int | None) -> list[tuple[int, int, str]]:
        return [c for c in numbered if (want_epoch is None or c[0] == want_epoch) and (step is None or c[1] == step)]

    exact = matching(epoch)
    if exact:
        e, s, name = exact[-1]  # several files in one epoch: its last step
        return CheckpointChoice(name, "pth", e, s, "explicit epoch/step")
    epoch_present = epoch is not None and any(c[0] == epoch for c in numbered)
    if epoch is not None and epoch >= 1 and not epoch_present:
        shifted = matching(epoch - 1)
        if shifted:
            e, s, name = shifted[-1]
            note = (f"no checkpoint carries epoch {epoch}; using {name} (epoch {e}): its epochs look "
                    f"zero-indexed, so epoch {epoch} counted from 1 is numbered {e}")
            return CheckpointChoice(name, "pth", e, s, "explicit epoch/step (zero-indexed epoch)", (note,))
    asked = " ".join(p for p in (f"epoch {epoch}" if epoch is not None else "",
                                 f"step {step}" if step is not None else "") if p)
    raise InputFileError(
        f"{where} has no checkpoint for {asked} (available: {_describe(numbered)})",
        key="checkpoint",
        hint="pick one of the available epoch/step pairs; *latest* files are never used for an explicit request",
    )


def select_parent_model(action: str, artifacts: Iterable[str], *, epoch: int | None = None,
                        step: int | None = None, where: str = "the parent job") -> CheckpointChoice:
    """The artifact ``action`` should load from its parent job's results (rules 1-5)."""
    if action not in ACCEPTED_KINDS:
        raise SpecError(f"{action} does not take a parent model", key="parent_job_id")
    artifacts = list(artifacts)
    kinds = ACCEPTED_KINDS[action]
    if epoch is None and step is None:
        quantized = [a for a in artifacts if _basename(a) == QUANTIZED_NAME]
        onnx = sorted(a for a in artifacts if _basename(a).lower().endswith(".onnx"))
        if "quantized" in kinds and quantized:
            return CheckpointChoice(quantized[0], "quantized", reason="quantized model of the parent quantize job")
        if "onnx" in kinds and onnx:
            if len(onnx) > 1:
                raise SpecError(f"{where} has several ONNX files: {', '.join(onnx)}", key=f"{action}.checkpoint",
                                hint="name the one to use explicitly")
            return CheckpointChoice(onnx[0], "onnx", reason="ONNX model of the parent export job")
        if not _numbered(artifacts) and (quantized or onnx):
            found = ", ".join(quantized + onnx)
            raise InputFileError(f"{action} needs a .pth checkpoint but {where} only has {found}",
                                 key=f"{action}.checkpoint", hint="use the train job as the parent")
    return select_checkpoint(artifacts, epoch=epoch, step=step, where=where)
