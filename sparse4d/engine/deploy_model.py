"""Rebuild a Sparse4D model from a checkpoint for the deployment actions (export, quantize).

A training checkpoint stores the resolved spec it was trained with (`spec`) and its `classes`, so the
network is rebuilt from *its* `model:` section, not from the export/quantize spec: camera count,
temporal-instance count and embed sizes then always match the weights. A bare state dict (no stored
spec) falls back to the action spec's `model:` section and `dataset.classes`. Anchors are taken from
the weights (`head.instance_bank.anchor`), so the anchor file need not exist on the export machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparse4d.engine.checkpoint import load_checkpoint_file, state_dict_of
from sparse4d.errors import DataError, SpecError

ANCHOR_WEIGHT = "head.instance_bank.anchor"


@dataclass
class LoadedModel:
    model: Any  # sparse4d.model.sparse4d.Sparse4D
    model_cfg: Any  # sparse4d.config.model.ModelConfig the model was built from
    classes: list[str]
    payload: dict[str, Any]  # the whole loaded checkpoint (weights_only)


def stored_model_config(payload: Any, fallback_model_cfg: Any) -> Any:
    """The checkpoint's own `model:` section when it stored a spec, else `fallback_model_cfg`."""
    from sparse4d.config.model import ModelConfig

    spec = payload.get("spec") if isinstance(payload, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("model"), dict):
        try:
            return ModelConfig.model_validate(spec["model"])
        except ValueError as exc:
            raise DataError(f"the checkpoint's stored model config is invalid ({str(exc)[:300]})",
                            hint="re-train with this version of sparse4d or export a bare state dict with the spec's model: section") from None
    return fallback_model_cfg


def stored_classes(payload: Any, fallback: list[str]) -> list[str]:
    classes = payload.get("classes") if isinstance(payload, dict) else None
    return [str(c) for c in classes] if classes else [str(c) for c in fallback]


def build_from_weights(model_cfg: Any, classes: list[str], weights: dict[str, torch.Tensor], *, key: str) -> Any:
    """A Sparse4D in eval mode with `weights` loaded strictly; shape mismatches name `key`."""
    from sparse4d.model.sparse4d import Sparse4D

    anchors = weights.get(ANCHOR_WEIGHT)
    if anchors is None or anchors.dim() != 2:
        raise DataError(f"the weights have no {ANCHOR_WEIGHT}: not a Sparse4D checkpoint", key=key)
    cfg = model_cfg.model_copy(deep=True)
    cfg.head.instance_bank.num_anchor = int(anchors.shape[0])
    model = Sparse4D.from_config(cfg, len(classes), anchors=anchors.float().numpy())
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise DataError(f"the weights do not fit the model built from the checkpoint's config ({str(exc)[:400]})", key=key,
                        hint="the checkpoint and its stored model config disagree; re-save the checkpoint") from None
    return model.eval()


def load_sparse4d_checkpoint(path: str, *, key: str, fallback_model_cfg: Any, fallback_classes: list[str]) -> LoadedModel:
    """Load `path` (weights_only) and rebuild the model it holds; errors name `key`."""
    if "quantized_model_torchao" in str(path):
        raise SpecError(f"{path} is a quantized checkpoint", key=key,
                        hint="export or quantize the float training checkpoint (model_epoch_XXX_step_YYYYY.pth)")
    payload = load_checkpoint_file(path, what=key)
    weights = state_dict_of(payload, str(path))
    if any(type(v) not in (torch.Tensor, torch.nn.Parameter) for v in weights.values()):
        raise SpecError(f"{path} holds quantized weights", key=key, hint="export/quantize the float checkpoint, not quantized_model_torchao.pth")
    model_cfg = stored_model_config(payload, fallback_model_cfg)
    classes = stored_classes(payload, fallback_classes)
    if not classes:
        raise DataError("neither the checkpoint nor the spec lists classes", key="dataset.classes")
    model = build_from_weights(model_cfg, classes, weights, key=key)
    return LoadedModel(model=model, model_cfg=model_cfg, classes=classes, payload=payload if isinstance(payload, dict) else {})
