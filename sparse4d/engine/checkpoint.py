"""Checkpoint files: names, atomic writes, the `model_latest.pth` pointer and safe loading.

Naming: ``model_epoch_{epoch:03d}_step_{step:05d}.pth`` where ``epoch`` is the number of *completed*
epochs when the file was written (TAO's convention: the file written at the end of the first epoch is
``model_epoch_001_...``; a step checkpoint inside the first epoch is ``model_epoch_000_...``) and
``step`` the number of optimizer steps done. ``model_latest.pth`` is a hard link to (or copy of) the
newest one: a pointer for people, never picked by the checkpoint-selection rules.

Every file is written to a temporary name in the same folder, flushed and fsynced, then renamed over
the target, so a kill -9 at any point leaves either the old file or the new one, never a torn file.
A checkpoint holds only tensors and plain containers (loadable with ``torch.load(weights_only=True)``):

``state_dict``, ``optimizer``, ``lr_scheduler``, ``epoch`` (completed epochs), ``global_step``,
``batches_in_epoch`` (batches of the running epoch already trained; 0 at an epoch boundary),
``rng`` (python/numpy/torch/cuda states), ``spec`` (the resolved spec as a dict, without the
encryption key), ``classes``, ``format``.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse4d.errors import DataError, InputFileError
from sparse4d.jobs.fileio import fsync_dir

CHECKPOINT_FORMAT = "sparse4d-checkpoint-1"
LATEST_NAME = "model_latest.pth"
CHECKPOINT_PATTERN = re.compile(r"^model_epoch_(\d{3,})_step_(\d{5,})\.pth$")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"model_epoch_{epoch:03d}_step_{step:05d}.pth"


def atomic_torch_save(payload: Any, target: Path) -> None:
    """torch.save to a temporary file beside `target`, fsync, then os.replace."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later run delete what a killed one left (remove_dead_temporaries)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def point_latest(checkpoint: Path) -> Path:
    """Make ``model_latest.pth`` beside `checkpoint` refer to it (hard link, else copy), atomically."""
    checkpoint = Path(checkpoint)
    latest = checkpoint.parent / LATEST_NAME
    tmp = checkpoint.parent / f".{LATEST_NAME}.{os.getpid()}.tmp"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(checkpoint, tmp)
    except OSError:
        shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, latest)
    fsync_dir(checkpoint.parent)
    return latest


def list_checkpoints(folder: Path) -> list[tuple[int, int, Path]]:
    """(epoch, step, path) of the numbered checkpoints in `folder`, oldest first."""
    found = []
    for path in Path(folder).glob("model_epoch_*_step_*.pth"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def load_checkpoint_file(path: str | os.PathLike[str], *, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; a missing file or one that carries code is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} {path} does not exist", hint="check the path (checkpoints are model_epoch_XXX_step_YYYYY.pth)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{what} {path} holds more than tensors and plain containers (it would run code when loaded): refused",
            hint="re-save it as a plain state dict: torch.save(model.state_dict(), path)",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{what} {path} is not a readable PyTorch checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})",
                        hint="the file may be truncated or not a .pth file") from exc


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as tensors/plain values (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]), float(npy["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def spec_as_plain_dict(spec: Any) -> dict[str, Any]:
    """The resolved spec as plain data, with the encryption key removed (never stored or printed)."""
    data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    data.pop("encryption_key", None)
    return data


def state_dict_of(payload: Any, source: str) -> dict[str, torch.Tensor]:
    """The model weights inside a loaded file: a full checkpoint's ``state_dict`` or a bare state dict."""
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    elif isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise DataError(f"{source} holds no model state dict", hint="expected a Sparse4D checkpoint or a state dict of tensors")
    return {str(k): v for k, v in payload.items()}
