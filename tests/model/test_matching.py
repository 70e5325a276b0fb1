"""Hungarian matching against brute force over all assignments."""
from __future__ import annotations

import itertools

import torch

from sparse4d.model.matching import focal_class_cost, hungarian_match, matching_cost


def brute_force_min_cost(cost: torch.Tensor) -> float:
    q, m = cost.shape
    best = float("inf")
    if q >= m:
        for rows in itertools.permutations(range(q), m):
            best = min(best, sum(float(cost[r, c]) for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(m), q):
            best = min(best, sum(float(cost[r, c]) for r, c in enumerate(cols)))
    return best


def test_matching_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(7)
    weights = torch.tensor([2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    kw = dict(alpha=0.25, gamma=2.0, cls_weight=2.0, box_weight=0.25, reg_weights=weights)
    for trial in range(25):
        q = int(torch.randint(1, 7, (1,), generator=g))
        m = int(torch.randint(1, 5, (1,), generator=g))
        logits = torch.randn(q, 3, generator=g) * 2
        boxes = torch.randn(q, 11, generator=g) * 3
        labels = torch.randint(0, 3, (m,), generator=g)
        gt = torch.randn(m, 11, generator=g) * 3
        rows, cols = hungarian_match(logits, boxes, labels, gt, **kw)
        cost = matching_cost(logits, boxes, labels, gt, **kw)
        assert len(rows) == min(q, m)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        got = float(cost[rows, cols].sum())
        assert abs(got - brute_force_min_cost(cost)) < 1e-4, trial


def test_class_cost_prefers_confident_correct_class() -> None:
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    cost = focal_class_cost(logits, torch.tensor([0, 1]), alpha=0.25, gamma=2.0)
    assert cost[0, 0] < cost[1, 0] and cost[1, 1] < cost[0, 1]


def test_empty_ground_truth_matches_nothing() -> None:
    rows, cols = hungarian_match(torch.randn(4, 3), torch.randn(4, 11), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 11),
                                 alpha=0.25, gamma=2.0, cls_weight=2.0, box_weight=0.25, reg_weights=torch.ones(11))
    assert rows.numel() == 0 and cols.numel() == 0
