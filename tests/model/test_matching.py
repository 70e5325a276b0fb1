"""Hungarian matching against brute force over all assignments."""
from __future__ import annotations

import itertools

import torch

from sparse4d.model.matching import UNASSIGNED, LayerMatcher, focal_class_cost, hungarian_match, matching_cost


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


def test_layer_matcher_solves_every_layer_and_sample_optimally() -> None:
    """Layers queued one by one (as the forward does) each get their own optimal assignment per sample;
    a sample without GT leaves every query unassigned."""
    g = torch.Generator().manual_seed(3)
    weights = torch.ones(11)
    kw = dict(alpha=0.25, gamma=2.0, cls_weight=2.0, box_weight=0.25, reg_weights=weights)
    labels = torch.tensor([[0, 2, 1], [1, 0, 0]])
    gt = torch.randn(2, 3, 11, generator=g) * 3
    matcher = LayerMatcher(lambda logits, boxes: matching_cost(logits, boxes, labels, gt, **kw), [3, 0])
    layers = [(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 11, generator=g) * 3) for _ in range(3)]
    for logits, boxes in layers:
        matcher.add_layer(logits, boxes)
    assigned = matcher.assignments()
    assert assigned.shape == (3, 2, 5) and assigned.dtype == torch.int64
    for layer, (logits, boxes) in enumerate(layers):
        rows, cols = hungarian_match(logits[0], boxes[0], labels[0], gt[0], **kw)
        expected = torch.full((5,), UNASSIGNED, dtype=torch.int64)
        expected[rows] = cols
        assert torch.equal(assigned[layer, 0], expected)
        assert bool((assigned[layer, 1] == UNASSIGNED).all())
