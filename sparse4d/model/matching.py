"""Hungarian matching of queries to ground truth (one frame, one sample).

Cost = focal classification cost x cls_weight + weighted L1 box cost x box_weight, as Sparse4D's
SparseBox3DTarget defines it; the assignment is scipy's linear_sum_assignment.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def focal_class_cost(logits: Tensor, gt_labels: Tensor, alpha: float, gamma: float, eps: float = 1e-12) -> Tensor:
    """(Q, C) logits, (M,) labels -> (Q, M): focal loss of calling the query class k minus not calling it."""
    prob = logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return (pos - neg)[:, gt_labels]


def box_l1_cost(boxes: Tensor, gt_boxes: Tensor, reg_weights: Tensor) -> Tensor:
    """(Q, D), (M, D), (D,) -> (Q, M) weighted L1 distance (NaN targets count as 0 difference)."""
    diff = (boxes[:, None] - gt_boxes[None]).abs()
    diff = torch.nan_to_num(diff, nan=0.0)
    return (diff * reg_weights).sum(-1)


def matching_cost(
    logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *, alpha: float, gamma: float, cls_weight: float, box_weight: float, reg_weights: Tensor
) -> Tensor:
    return focal_class_cost(logits, gt_labels, alpha, gamma) * cls_weight + box_l1_cost(boxes, gt_boxes, reg_weights) * box_weight


@torch.no_grad()
def hungarian_match(
    logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *, alpha: float, gamma: float, cls_weight: float, box_weight: float, reg_weights: Tensor
) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment. Returns (query indices, gt indices), int64 on logits.device."""
    device = logits.device
    if gt_labels.numel() == 0 or logits.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    cost = matching_cost(logits.float(), boxes.float(), gt_labels, gt_boxes.float(), alpha=alpha, gamma=gamma, cls_weight=cls_weight, box_weight=box_weight, reg_weights=reg_weights.float())
    cost_np = np.nan_to_num(cost.cpu().double().numpy(), nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost_np)
    return torch.as_tensor(rows, dtype=torch.int64, device=device), torch.as_tensor(cols, dtype=torch.int64, device=device)
