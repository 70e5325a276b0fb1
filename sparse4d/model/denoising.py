"""Temporal instance denoising (Sparse4D v3): noisy copies of the ground truth as extra queries.

Each of `num_dn_groups` groups holds, per GT box, one positive query (anchor = GT + noise in
[-1, 1] x dn_noise_scale) and, with `add_neg_dn`, one negative query (noise in +-[1, 2] x scale).
Inside a group the noisy anchors are assigned to GT boxes by Hungarian matching on the weighted L1
distance; assigned queries learn their GT, the rest are background (class target -1, kept in the
classification loss). Slots that only pad samples to the same GT count are invalid and excluded.
Groups only see themselves, and the normal queries never see any of them.

`num_temp_dn_groups` groups are carried to the next frame: their targets follow the instance id of
the GT they denoised; a carried query whose instance left the scene becomes background.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .matching import box_l1_cost


@dataclass
class DenoisingQueries:
    """All denoising queries of a batch, laid out group after group (G groups of M slots)."""

    anchors: Tensor  # (B, G*M, 11)
    box_targets: Tensor  # (B, G*M, 11) encoded targets (zeros where background/invalid)
    cls_targets: Tensor  # (B, G*M) int64: class, or -1 = background
    valid: Tensor  # (B, G*M) bool: False for padding slots
    instance_ids: Tensor  # (B, G*M) int64: id of the denoised GT, -1 for none
    num_groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * self.group_size

    def group_ids(self) -> Tensor:
        return torch.arange(self.num_queries, device=self.anchors.device) // self.group_size


@dataclass
class CarriedDenoising:
    """Final-layer features/anchors of the denoising groups carried to the next frame (training only)."""

    features: Tensor  # (B, Gt, M, C)
    anchors: Tensor  # (B, Gt, M, 11)
    cls_targets: Tensor  # (B, Gt, M)
    valid: Tensor  # (B, Gt, M)
    instance_ids: Tensor  # (B, Gt, M)


def make_denoising_queries(
    gt_anchors: list[Tensor],
    gt_labels: list[Tensor],
    gt_ids: list[Tensor],
    *,
    num_groups: int,
    noise_scale: list[float],
    max_dn_gt: int,
    add_neg_dn: bool,
    reg_weights: Tensor,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Build the denoising queries of one frame, or None when no sample has a GT box."""
    gt_anchors = [g[:max_dn_gt] for g in gt_anchors]
    gt_labels = [g[:max_dn_gt] for g in gt_labels]
    gt_ids = [g[:max_dn_gt] for g in gt_ids]
    num_gt = max((len(g) for g in gt_labels), default=0)
    if num_gt == 0:
        return None
    device = gt_anchors[0].device
    dtype = gt_anchors[0].dtype
    b = len(gt_anchors)
    scale = torch.tensor(noise_scale, dtype=dtype, device=device)
    per_copy = 2 if add_neg_dn else 1
    m = num_gt * per_copy
    anchors = torch.zeros(b, num_groups, m, gt_anchors[0].shape[-1], dtype=dtype, device=device)
    box_targets = torch.zeros_like(anchors)
    cls_targets = torch.full((b, num_groups, m), -1, dtype=torch.int64, device=device)
    valid = torch.zeros(b, num_groups, m, dtype=torch.bool, device=device)
    ids = torch.full((b, num_groups, m), -1, dtype=torch.int64, device=device)
    for i in range(b):
        n = len(gt_labels[i])
        if n == 0:
            continue
        gt = torch.nan_to_num(gt_anchors[i], nan=0.0)
        for g in range(num_groups):
            pos_noise = (torch.rand(n, gt.shape[-1], generator=generator, dtype=dtype).to(device) * 2 - 1) * scale
            noisy = [gt + pos_noise]
            if add_neg_dn:
                mag = torch.rand(n, gt.shape[-1], generator=generator, dtype=dtype).to(device) + 1
                sign = torch.where(torch.rand(n, gt.shape[-1], generator=generator).to(device) > 0.5, 1.0, -1.0).to(dtype)
                noisy.append(gt + mag * sign * scale)
            noisy_all = torch.cat(noisy, dim=0)  # (per_copy * n, 11); row j < n is the positive copy of GT j
            slots = torch.cat([torch.arange(n, device=device) + k * num_gt for k in range(per_copy)])
            cost = box_l1_cost(noisy_all, gt, reg_weights.to(dtype)).cpu().double().numpy()
            rows, cols = linear_sum_assignment(cost)
            target_cls = torch.full((len(noisy_all),), -1, dtype=torch.int64, device=device)
            target_box = torch.zeros_like(noisy_all)
            target_id = torch.full((len(noisy_all),), -1, dtype=torch.int64, device=device)
            rows_t = torch.as_tensor(rows, device=device)
            cols_t = torch.as_tensor(cols, device=device)
            target_cls[rows_t] = gt_labels[i][cols_t]
            target_box[rows_t] = gt_anchors[i][cols_t]
            target_id[rows_t] = gt_ids[i][cols_t]
            anchors[i, g, slots] = noisy_all
            box_targets[i, g, slots] = target_box
            cls_targets[i, g, slots] = target_cls
            valid[i, g, slots] = True
            ids[i, g, slots] = target_id
    return DenoisingQueries(
        anchors=anchors.flatten(1, 2),
        box_targets=box_targets.flatten(1, 2),
        cls_targets=cls_targets.flatten(1, 2),
        valid=valid.flatten(1, 2),
        instance_ids=ids.flatten(1, 2),
        num_groups=num_groups,
        group_size=m,
    )


def attention_mask(num_anchor: int, dn: DenoisingQueries | None, batch_size: int, device: torch.device) -> Tensor | None:
    """(B, L, L) bool, True = blocked: normal queries see each other only; a denoising query sees the
    valid queries of its own group (and itself)."""
    if dn is None:
        return None
    total = num_anchor + dn.num_queries
    group = torch.cat([torch.full((num_anchor,), -1, device=device), dn.group_ids()])
    same_group = group[:, None] == group[None, :]
    key_valid = torch.cat([torch.ones(batch_size, num_anchor, dtype=torch.bool, device=device), dn.valid], dim=1)
    allowed = same_group[None] & key_valid[:, None, :]
    allowed = allowed | torch.eye(total, dtype=torch.bool, device=device)[None]
    return ~allowed


def retarget_carried(carried: CarriedDenoising, gt_anchors: list[Tensor], gt_labels: list[Tensor], gt_ids: list[Tensor]) -> tuple[Tensor, Tensor]:
    """New (box targets (B, Gt, M, 11), class targets (B, Gt, M)) for carried queries by instance id.

    A positive carried query whose instance is in this frame learns its current box; one whose
    instance is gone (and every carried negative) is background (-1).
    """
    b, gt_groups, m = carried.cls_targets.shape
    box = torch.zeros_like(carried.anchors)
    cls = torch.full_like(carried.cls_targets, -1)
    for i in range(b):
        if len(gt_ids[i]) == 0:
            continue
        match = (carried.instance_ids[i][..., None] == gt_ids[i][None, None]) & (carried.cls_targets[i][..., None] >= 0)
        match = match & (carried.instance_ids[i][..., None] >= 0)
        found = match.any(-1)
        index = match.float().argmax(-1)
        box[i] = torch.where(found[..., None], gt_anchors[i][index], box[i])
        cls[i] = torch.where(found, gt_labels[i][index], cls[i])
    return box, cls


def fit_group_size(values: Tensor, size: int, fill: float | int | bool) -> Tensor:
    """Pad (with `fill`) or cut dimension 2 of (B, G, M, ...) to `size`."""
    m = values.shape[2]
    if m >= size:
        return values[:, :, :size]
    pad_shape = list(values.shape)
    pad_shape[2] = size - m
    return torch.cat([values, torch.full(pad_shape, fill, dtype=values.dtype, device=values.device)], dim=2)


__all__ = ["DenoisingQueries", "CarriedDenoising", "make_denoising_queries", "attention_mask", "retarget_carried", "fit_group_size", "np"]
