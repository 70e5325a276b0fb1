"""`train.pretrained_model_path`: start from ImageNet ResNet weights or from a full Sparse4D model.

Accepted files (all read with ``torch.load(weights_only=True)``):

- an ImageNet ResNet state dict with torchvision/timm names (``conv1.weight``, ``layer1.0.bn1.*``,
  ``fc.*``), optionally under a ``backbone.`` / ``img_backbone.`` / ``module.`` prefix; ``fc.*`` is
  dropped because the detector has no classifier;
- a full model: a Sparse4D checkpoint (``state_dict`` inside) or a bare state dict of the whole model.

The load is strict by default: every weight of the part being loaded (the backbone, or the whole
model) must be present with the right shape and nothing may be left over. Counts of matched, missing
and unexpected weights are printed, and a file that matches nothing is refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sparse4d.engine.checkpoint import load_checkpoint_file, state_dict_of
from sparse4d.errors import DataError

LOG = logging.getLogger(__name__)
WRAPPER_PREFIXES = ("module.", "model.")
BACKBONE_PREFIXES = ("img_backbone.", "backbone.")
IGNORED_SUFFIXES = ("num_batches_tracked",)


@dataclass
class LoadReport:
    kind: str  # "backbone" or "full model"
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.kind} weights: {len(self.matched)} matched, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.wrong_shape)} with the wrong shape")


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def backbone_prefix(model: nn.Module) -> str | None:
    """Where the ResNet trunk sits inside `model` (the prefix of its `conv1.weight`)."""
    own = model.state_dict()
    for name in own:
        if name.endswith("conv1.weight"):
            prefix = name[: -len("conv1.weight")]
            if prefix + "layer1.0.conv1.weight" in own:
                return prefix
    return None


def _compare(target: dict[str, torch.Tensor], own: dict[str, torch.Tensor], scope: str, kind: str) -> LoadReport:
    report = LoadReport(kind)
    for name, value in target.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.wrong_shape.append(name)
        else:
            report.matched.append(name)
    report.missing = [name for name in own if name.startswith(scope) and name not in target and not name.endswith(IGNORED_SUFFIXES)]
    return report


def plan_load(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map file names to model names as a full model and as a backbone; keep the better match."""
    own = model.state_dict()
    full = {_strip(k, WRAPPER_PREFIXES): v for k, v in weights.items()}
    full_report = _compare(full, own, "", "full model")
    candidates = [(full, full_report)]
    prefix = backbone_prefix(model)
    if prefix is not None:
        trunk = {}
        for name, value in weights.items():
            bare = _strip(_strip(name, WRAPPER_PREFIXES), BACKBONE_PREFIXES)
            if bare.startswith("fc."):
                continue  # ImageNet classifier: the detector has none
            trunk[prefix + bare] = value
        candidates.append((trunk, _compare(trunk, own, prefix, "backbone")))
    def fit(item: tuple[dict, LoadReport]) -> tuple[int, bool]:
        r = item[1]
        return len(r.matched) - len(r.missing) - len(r.unexpected) - len(r.wrong_shape), r.kind == "full model"

    return max(candidates, key=fit)


def load_pretrained(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load `path` into `model` (see module docstring); returns the counts, raises DataError on a bad match."""
    payload = load_checkpoint_file(path, what="train.pretrained_model_path")
    weights = state_dict_of(payload, str(path))
    mapped, report = plan_load(model, weights)
    message = f"pretrained {path}: {report.summary()}"
    print(message, flush=True)
    LOG.info("%s", message)
    if not report.matched:
        raise DataError(f"{path}: no weight matches this model ({len(weights)} weights in the file, first: {next(iter(weights))})",
                        key="train.pretrained_model_path",
                        hint="use an ImageNet ResNet of model.backbone.type (torchvision/timm names) or a Sparse4D checkpoint")
    if report.wrong_shape:
        raise DataError(f"{path}: {len(report.wrong_shape)} weights have the wrong shape (first: {report.wrong_shape[0]})",
                        key="train.pretrained_model_path", hint="check model.backbone.type / model.* sizes against the weights")
    if strict and (report.missing or report.unexpected):
        raise DataError(
            f"{path}: strict load failed: {report.summary()} (missing e.g. {report.missing[:3]}, unexpected e.g. {report.unexpected[:3]})",
            key="train.pretrained_model_path",
            hint="the weights must fit model.backbone.type (ImageNet ResNet) or this exact model configuration",
        )
    model.load_state_dict({k: v for k, v in mapped.items() if k in report.matched}, strict=False)
    return report
