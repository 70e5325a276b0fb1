"""Detection losses with mmdetection semantics (what upstream Sparse4D trains with).

The classification loss is the reason this module exists: TAO's Sparse4D drops queries whose label is
`num_classes` (unmatched) from its focal loss, so unmatched queries never learn to be background and
inference floods with confident false positives. Here any label outside [0, num_classes) becomes an
all-zero target row that stays in the loss.

Every loss takes an optional boolean `mask` over its rows instead of being called on a boolean-indexed
selection: indexing by a mask needs the number of selected rows on the host (a GPU sync, in the
forward and again in the backward), a masked sum does not.

Every loss computes in float32 whatever its inputs' dtype: under bf16 autocast the heads' logits are
bf16, where a confident probability rounds to exactly 1 (sigmoid(8) already does), and a focal loss
built from that probability gets a wrong value and no gradient (tests/model/test_losses.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse4d.batch import ANCHOR_COS, ANCHOR_SIN

YAW = slice(ANCHOR_SIN, ANCHOR_COS + 1)  # sin, cos: a slice, since a list index would be copied to the GPU each call


def full_precision(values: Tensor) -> Tensor:
    """`values` in float32, or float64 if they are (bf16/fp16 logits are upcast)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def one_hot_or_background(labels: Tensor, num_classes: int) -> Tensor:
    """(M,) int labels -> (M, num_classes) float targets; labels outside [0, num_classes) give all zeros."""
    in_range = (labels >= 0) & (labels < num_classes)
    safe = torch.where(in_range, labels, torch.full_like(labels, num_classes))
    return F.one_hot(safe, num_classes + 1)[:, :num_classes].float()


def normalised_sum(values: Tensor, normaliser: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """sum(values over rows where mask) / max(normaliser, 1); mask (rows,) broadcasts over trailing dims."""
    if mask is not None:
        row_mask = mask.reshape(*mask.shape, *([1] * (values.dim() - mask.dim())))
        values = torch.where(row_mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if isinstance(normaliser, Tensor):
        return values.sum() / normaliser.to(values.dtype).clamp(min=1.0)
    return values.sum() / max(float(normaliser), 1.0)


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, *, gamma: float, alpha: float, normaliser: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """Sum of per-element sigmoid focal losses over ALL rows (or the rows where `mask`), divided by max(normaliser, 1).

    logits (M, C); labels (M,) int64. Rows whose label is num_classes (unmatched), negative
    (background denoising queries) or otherwise out of range are pure negatives.
    """
    logits = full_precision(logits)
    target = one_hot_or_background(labels, logits.shape[-1]).to(logits.dtype)
    prob = logits.sigmoid()
    p_wrong = (1 - prob) * target + prob * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * p_wrong.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    return normalised_sum(loss, normaliser, mask)


def weighted_l1(pred: Tensor, target: Tensor, weights: Tensor, normaliser: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """sum(|pred - target| * weights) over the rows where mask / max(normaliser, 1)."""
    return normalised_sum((full_precision(pred) - full_precision(target)).abs() * full_precision(weights), normaliser, mask)


def centerness_loss(cns_logit: Tensor, pred_box: Tensor, target_box: Tensor, normaliser: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """BCE against exp(-centre distance): how well the box centre is localised."""
    cns_logit = full_precision(cns_logit)
    distance = torch.norm(full_precision(pred_box[..., :3]) - full_precision(target_box[..., :3]), dim=-1)
    target = torch.exp(-distance).detach().to(cns_logit.dtype)
    return normalised_sum(F.binary_cross_entropy_with_logits(cns_logit, target, reduction="none"), normaliser, mask)


def gaussian_focal_loss(pred_prob: Tensor, target: Tensor, normaliser: Tensor | float, alpha: float = 2.0, gamma: float = 4.0, eps: float = 1e-12,
                        mask: Tensor | None = None) -> Tensor:
    """mmdetection's Gaussian focal loss, summed then normalised: an empty selection gives 0, not NaN."""
    pred_prob, target = full_precision(pred_prob), full_precision(target)
    pos = target.eq(1).to(pred_prob.dtype)
    neg_weight = (1 - target).pow(gamma)
    pos_loss = -(pred_prob + eps).log() * (1 - pred_prob).pow(alpha) * pos
    neg_loss = -(1 - pred_prob + eps).log() * pred_prob.pow(alpha) * neg_weight
    return normalised_sum(pos_loss + neg_loss, normaliser, mask)


def yawness_loss(yns_logit: Tensor, pred_box: Tensor, target_box: Tensor, normaliser: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """Does the predicted heading point the same way as the target (cosine > 0)?"""
    target = (F.cosine_similarity(pred_box[..., YAW], target_box[..., YAW], dim=-1) > 0).float().detach()
    return gaussian_focal_loss(full_precision(yns_logit).sigmoid(), target, normaliser, mask=mask)


def allow_reversed_yaw(pred_box: Tensor, target_box: Tensor, labels: Tensor, reversible_classes: list[int] | Tensor) -> Tensor:
    """For classes whose front/back is ambiguous, flip the target heading when the prediction faces away.

    reversible_classes: class ids, as a list or (to avoid a host-to-device copy per call) a tensor on labels' device.
    """
    if len(reversible_classes) == 0:
        return target_box
    if not isinstance(reversible_classes, Tensor):
        reversible_classes = torch.tensor(reversible_classes, device=labels.device)
    away = F.cosine_similarity(pred_box[..., YAW], target_box[..., YAW], dim=-1) < 0
    flip = away & torch.isin(labels, reversible_classes)
    yaw = torch.where(flip[..., None], -target_box[..., YAW], target_box[..., YAW])
    return torch.cat([target_box[..., :ANCHOR_SIN], yaw, target_box[..., ANCHOR_COS + 1 :]], dim=-1)
