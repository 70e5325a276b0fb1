"""`load_model_for_eval(path, spec)`: the one place evaluate/inference turn a checkpoint into a model.

Handles `sparse4d train` checkpoints and bare state dicts (weights_only loading). Quantized
checkpoints (`quantized_model_torchao.pth`) are the quantize helper's seam: they are recognised here
by name and routed to `sparse4d.engine.quantize.load_quantized_model(path, spec)` when that exists.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sparse4d.engine.checkpoint import load_checkpoint_file, state_dict_of
from sparse4d.errors import DataError

LOG = logging.getLogger(__name__)
QUANTIZED_MARKER = "quantized_model_torchao"


def is_quantized_checkpoint(path: str | Path) -> bool:
    return QUANTIZED_MARKER in Path(path).name


def load_model_for_eval(path: str | Path, spec: Any, *, key: str = "evaluate.checkpoint") -> torch.nn.Module:
    """A Sparse4D model in eval mode with the weights of `path`, built from `spec.model` and `spec.dataset.classes`."""
    if is_quantized_checkpoint(path):
        from sparse4d.engine.quantize import load_quantized_model

        model = load_quantized_model(path, spec, key=key)
        model.eval()
        return model
    from sparse4d.model.sparse4d import Sparse4D

    payload = load_checkpoint_file(path, what=key)
    classes = [str(c) for c in spec.dataset.classes]
    saved = payload.get("classes") if isinstance(payload, dict) else None
    if saved and list(saved) != classes:
        raise DataError(f"{path} was trained on classes {list(saved)}, the spec lists {classes}", key="dataset.classes",
                        hint="set dataset.classes to the training classes")
    weights = state_dict_of(payload, str(path))
    model = Sparse4D.from_config(spec.model, len(classes))
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise DataError(f"{path} does not fit the model of this spec ({len(missing)} missing, {len(result.unexpected_keys)} unexpected weights, "
                        f"e.g. {(missing or list(result.unexpected_keys))[:3]})", key=key,
                        hint="use the same model.* settings as the training spec")
    model.eval()
    from .devices import prepare_model_for_device

    return prepare_model_for_device(model)
