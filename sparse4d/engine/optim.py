"""Optimizer and learning-rate schedule built from `train.optim`.

The image backbone gets its own parameter group (`paramwise_cfg.custom_keys.img_backbone.lr_mult`):
ImageNet features need smaller updates than the freshly initialised head. The schedule is a linear
warmup from `warmup_ratio * lr` over `warmup_iters` optimizer steps, then a cosine decay to
`min_lr_ratio * lr` at the last step, sized from the real number of optimizer steps of the run.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

BACKBONE_PREFIXES = ("img_backbone.", "backbone.")


def is_backbone_parameter(name: str) -> bool:
    """Parameter names of the image backbone (module attribute `img_backbone` or `backbone`)."""
    return any(name.startswith(prefix) or f".{prefix}" in name for prefix in BACKBONE_PREFIXES)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Two groups: backbone (lr * lr_mult) and everything else; frozen parameters are left out."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (backbone if is_backbone_parameter(name) else rest).append(param)
    groups = [{"params": rest, "lr": lr, "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "img_backbone"})
    return groups


def all_on_cuda(groups: list[dict[str, Any]]) -> bool:
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(model: nn.Module, optim: Any, capturable: bool = False) -> torch.optim.Optimizer:
    """`optim` is the `train.optim` section (type, lr, weight_decay, momentum, paramwise_cfg).
    `capturable`: an Adam(W) whose step can be captured in a CUDA graph (graphed_step.py); fused on
    every device, since PyTorch captures only fused or CUDA optimizers."""
    groups = parameter_groups(model, float(optim.lr), float(optim.paramwise_cfg.custom_keys.img_backbone.lr_mult))
    kind = str(optim.type)
    # On a GPU, Adam(W) steps as one fused kernel per launch chunk instead of foreach's several passes
    # (what benchmarks/train_throughput.py measures, --fused-adam); Lightning builds the optimizer
    # after moving the model, so the parameters' device is known here.
    fused = all_on_cuda(groups) or capturable
    extra = {"capturable": True} if capturable else {}
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=float(optim.lr), weight_decay=float(optim.weight_decay), fused=fused, **extra)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=float(optim.lr), weight_decay=float(optim.weight_decay), fused=fused, **extra)
    if capturable:
        raise ValueError(f"a graphed optimizer step needs train.optim.type adam or adamw, not {kind!r}")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=float(optim.lr), momentum=float(optim.momentum), weight_decay=float(optim.weight_decay))
    raise ValueError(f"unknown optimizer type {kind!r}")  # the spec schema only allows the three above


def lr_factor(step: int, total_steps: int, warmup_iters: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Multiplier of the base lr after `step` optimizer steps (step 0 = the first update).

    Warmup is capped at the run's total steps, so a short run still ends its warmup.
    """
    total_steps = max(int(total_steps), 1)
    warmup = min(int(warmup_iters), total_steps)
    if step < warmup:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup
    decay_steps = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / decay_steps, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step (`lr_scheduler` is the `train.optim.lr_scheduler` section)."""
    warmup_iters = int(lr_scheduler.warmup_iters)
    warmup_ratio = float(lr_scheduler.warmup_ratio)
    min_lr_ratio = float(lr_scheduler.min_lr_ratio)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_iters, warmup_ratio, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
