"""Detection losses with mmdetection semantics (what upstream Sparse4D trains with).

The classification loss is the reason this module exists: TAO's Sparse4D drops queries whose label is
`num_classes` (unmatched) from its focal loss, so unmatched queries never learn to be background and
inference floods with confident false positives. Here any label outside [0, num_classes) becomes an
all-zero target row that stays in the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse4d.batch import ANCHOR_COS, ANCHOR_SIN


def one_hot_or_background(labels: Tensor, num_classes: int) -> Tensor:
    """(M,) int labels -> (M, num_classes) float targets; labels outside [0, num_classes) give all zeros."""
    in_range = (labels >= 0) & (labels < num_classes)
    safe = torch.where(in_range, labels, torch.full_like(labels, num_classes))
    return F.one_hot(safe, num_classes + 1)[:, :num_classes].float()


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, *, gamma: float, alpha: float, normaliser: Tensor | float) -> Tensor:
    """Sum of per-element sigmoid focal losses over ALL rows, divided by max(normaliser, 1).

    logits (M, C); labels (M,) int64. Rows whose label is num_classes (unmatched), negative
    (background denoising queries) or otherwise out of range are pure negatives.
    """
    target = one_hot_or_background(labels, logits.shape[-1]).to(logits.dtype)
    prob = logits.sigmoid()
    p_wrong = (1 - prob) * target + prob * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * p_wrong.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    norm = torch.as_tensor(normaliser, dtype=logits.dtype, device=logits.device).clamp(min=1.0)
    return loss.sum() / norm


def weighted_l1(pred: Tensor, target: Tensor, weights: Tensor, normaliser: Tensor | float) -> Tensor:
    """sum(|pred - target| * weights) / max(normaliser, 1)."""
    norm = torch.as_tensor(normaliser, dtype=pred.dtype, device=pred.device).clamp(min=1.0)
    return ((pred - target).abs() * weights).sum() / norm


def centerness_loss(cns_logit: Tensor, pred_box: Tensor, target_box: Tensor, normaliser: Tensor | float) -> Tensor:
    """BCE against exp(-centre distance): how well the box centre is localised."""
    target = torch.exp(-torch.norm(pred_box[..., :3] - target_box[..., :3], dim=-1)).detach()
    norm = torch.as_tensor(normaliser, dtype=cns_logit.dtype, device=cns_logit.device).clamp(min=1.0)
    return F.binary_cross_entropy_with_logits(cns_logit, target, reduction="sum") / norm


def gaussian_focal_loss(pred_prob: Tensor, target: Tensor, normaliser: Tensor | float, alpha: float = 2.0, gamma: float = 4.0, eps: float = 1e-12) -> Tensor:
    """mmdetection's Gaussian focal loss, summed then normalised: an empty selection gives 0, not NaN."""
    pos = target.eq(1).to(pred_prob.dtype)
    neg_weight = (1 - target).pow(gamma)
    pos_loss = -(pred_prob + eps).log() * (1 - pred_prob).pow(alpha) * pos
    neg_loss = -(1 - pred_prob + eps).log() * pred_prob.pow(alpha) * neg_weight
    norm = torch.as_tensor(normaliser, dtype=pred_prob.dtype, device=pred_prob.device).clamp(min=1.0)
    return (pos_loss + neg_loss).sum() / norm


def yawness_loss(yns_logit: Tensor, pred_box: Tensor, target_box: Tensor, normaliser: Tensor | float) -> Tensor:
    """Does the predicted heading point the same way as the target (cosine > 0)?"""
    yaw_idx = [ANCHOR_SIN, ANCHOR_COS]
    target = (F.cosine_similarity(pred_box[..., yaw_idx], target_box[..., yaw_idx], dim=-1) > 0).to(yns_logit.dtype).detach()
    return gaussian_focal_loss(yns_logit.sigmoid(), target, normaliser)


def allow_reversed_yaw(pred_box: Tensor, target_box: Tensor, labels: Tensor, reversible_classes: list[int]) -> Tensor:
    """For classes whose front/back is ambiguous, flip the target heading when the prediction faces away."""
    if not reversible_classes:
        return target_box
    yaw_idx = [ANCHOR_SIN, ANCHOR_COS]
    away = F.cosine_similarity(pred_box[..., yaw_idx], target_box[..., yaw_idx], dim=-1) < 0
    flip = away & torch.isin(labels, torch.tensor(reversible_classes, device=labels.device))
    flipped = target_box.clone()
    flipped[..., yaw_idx] = torch.where(flip[..., None], -target_box[..., yaw_idx], target_box[..., yaw_idx])
    return flipped
