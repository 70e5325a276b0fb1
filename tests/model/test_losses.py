"""Classification loss semantics (the TAO bug of seed 003) and the box/quality losses."""
from __future__ import annotations

import math

import torch

from sparse4d.model.losses import gaussian_focal_loss, sigmoid_focal_loss, yawness_loss
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


def reference_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float, normaliser: float) -> float:
    """mmdetection's sigmoid focal loss written out element by element (float64 Python)."""
    num_classes = logits.shape[1]
    total = 0.0
    for i in range(logits.shape[0]):
        for k in range(num_classes):
            p = 1.0 / (1.0 + math.exp(-float(logits[i, k])))
            if int(labels[i]) == k:
                total += -alpha * (1 - p) ** gamma * math.log(p)
            else:
                total += -(1 - alpha) * p**gamma * math.log(1 - p)
    return total / max(normaliser, 1.0)


def tao_dropping_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float, normaliser: float) -> torch.Tensor:
    """The buggy variant from seed 003: rows whose label is outside [0, C) are removed before the loss."""
    keep = (labels >= 0) & (labels < logits.shape[1])
    return sigmoid_focal_loss(logits[keep], labels[keep], gamma=gamma, alpha=alpha, normaliser=normaliser)


def unmatched_queries_are_pushed_down(loss_fn) -> bool:
    """Every query unmatched: the loss must be positive and a gradient step must lower every logit."""
    logits = torch.randn(20, 3, dtype=torch.float64).requires_grad_()
    labels = torch.full((20,), 3, dtype=torch.int64)  # num_classes = unmatched
    loss = loss_fn(logits, labels, 2.0, 0.25, 0.0)
    if not loss.requires_grad or float(loss.detach()) <= 0:
        return False
    loss.backward()
    assert logits.grad is not None
    return bool((logits.grad > 0).all())


def test_focal_matches_mmdetection_reference() -> None:
    g = torch.Generator().manual_seed(3)
    for num_classes in (1, 4):
        logits = torch.randn(30, num_classes, generator=g, dtype=torch.float64) * 3
        labels = torch.randint(-3, num_classes + 2, (30,), generator=g)
        labels[0], labels[1], labels[2] = num_classes, -1, 0
        norm = float(((labels >= 0) & (labels < num_classes)).sum())
        ours = sigmoid_focal_loss(logits, labels, gamma=2.0, alpha=0.25, normaliser=norm)
        assert abs(float(ours) - reference_focal(logits, labels, 2.0, 0.25, norm)) < 1e-6
        ours_g = sigmoid_focal_loss(logits, labels, gamma=1.5, alpha=0.4, normaliser=0.0)  # clamped to 1
        assert abs(float(ours_g) - reference_focal(logits, labels, 1.5, 0.4, 0.0)) < 1e-6


def test_seed_003_unmatched_queries_get_negative_loss() -> None:
    torch.manual_seed(0)
    assert unmatched_queries_are_pushed_down(lambda x, y, g, a, n: sigmoid_focal_loss(x, y, gamma=g, alpha=a, normaliser=n))
    # the dropped-unmatched implementation fails the same check
    assert not unmatched_queries_are_pushed_down(tao_dropping_focal)


def test_model_loss_with_no_ground_truth_still_supervises_every_query() -> None:
    """Through Sparse4D.loss: a frame without GT must push every normal query's logits down."""
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(), num_classes=3, anchors=random_anchors(64))
    batch = synthetic_batch(2, num_gt=0)
    a = model.head.instance_bank.num_anchor
    cls = torch.randn(2, a, 3).requires_grad_()
    out = {"classification": [cls], "prediction": [torch.zeros(2, a, 11)], "quality": [torch.zeros(2, a, 2)], "dn": None}
    losses = model.loss(out, batch)
    assert float(losses["loss_cls_0"].detach()) > 0
    losses["loss"].backward()
    assert cls.grad is not None and bool((cls.grad > 0).all())
    for key, value in losses.items():
        assert torch.isfinite(value), key


def test_quality_losses_are_zero_not_nan_on_empty_selection() -> None:
    empty = torch.zeros(0, 11, requires_grad=True)
    logit = torch.zeros(0, requires_grad=True)
    loss = yawness_loss(logit, empty, empty.detach(), normaliser=0.0)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(gaussian_focal_loss(torch.zeros(0), torch.zeros(0), 0.0)) == 0.0


def test_gaussian_focal_matches_formula() -> None:
    p = torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = -math.log(0.2) * 0.8**2 - math.log(0.3) * 0.7**2 - math.log(0.9) * 0.1**2
    assert abs(float(gaussian_focal_loss(p, t, 2.0)) - expected / 2) < 1e-9


def test_masked_losses_equal_the_losses_of_the_selected_rows() -> None:
    """The sync-free masked form must give what the boolean-indexed selection gave."""
    from sparse4d.model.losses import centerness_loss, sigmoid_focal_loss, weighted_l1, yawness_loss

    g = torch.Generator().manual_seed(11)
    logits, labels = torch.randn(40, 4, generator=g), torch.randint(-1, 5, (40,), generator=g)
    pred, target = torch.randn(40, 11, generator=g), torch.randn(40, 11, generator=g)
    pred[3] = float("inf")  # a non-finite unselected row must not leak into the sum
    weights, quality = torch.rand(40, 11, generator=g), torch.randn(40, generator=g)
    mask = torch.rand(40, generator=g) > 0.4
    mask[3] = False
    norm = torch.tensor(7.0)
    kw = dict(gamma=2.0, alpha=0.25, normaliser=norm)
    pairs = [
        (sigmoid_focal_loss(logits, labels, mask=mask, **kw), sigmoid_focal_loss(logits[mask], labels[mask], **kw)),
        (weighted_l1(pred, target, weights, norm, mask), weighted_l1(pred[mask], target[mask], weights[mask], norm)),
        (centerness_loss(quality, pred, target, norm, mask), centerness_loss(quality[mask], pred[mask], target[mask], norm)),
        (yawness_loss(quality, pred, target, norm, mask), yawness_loss(quality[mask], pred[mask], target[mask], norm)),
    ]
    for masked, selected in pairs:
        assert torch.isfinite(masked) and torch.allclose(masked, selected, rtol=1e-5, atol=1e-6), (masked, selected)
    empty = torch.zeros(40, dtype=torch.bool)
    assert float(weighted_l1(pred, target, weights, norm, empty)) == 0.0


def test_bf16_logits_give_the_float32_losses_and_gradients() -> None:
    """Under bf16 autocast the heads hand bf16 logits to the losses. Confident predictions must keep
    their loss and gradient: computed in bf16, sigmoid(8) rounds to exactly 1, so a wrong confident
    yawness got loss 27.6 instead of 8.0 and zero gradient."""
    logits = torch.tensor([[8.0, -3.0], [-6.0, 9.0], [2.5, 0.5]])
    labels = torch.tensor([1, 1, 2])  # the first row is confidently wrong, the last unmatched
    box = torch.zeros(3, 11)
    box[:, 7] = 1.0  # heading +x
    target_box = box.clone()
    target_box[0, 7] = -1.0  # the first row faces the other way: its yawness target is 0

    def losses(x: torch.Tensor) -> list[torch.Tensor]:
        focal = sigmoid_focal_loss(x, labels, gamma=2.0, alpha=0.25, normaliser=2.0)
        yawness = yawness_loss(x[:, 0], box, target_box, 1.0)
        return [focal, yawness]

    for want_fn, got_fn in zip(losses(logits), losses(logits.bfloat16())):
        assert got_fn.dtype == torch.float32
        torch.testing.assert_close(got_fn, want_fn, rtol=0.02, atol=1e-4)
    grads = []
    for x in (logits.clone().requires_grad_(), logits.bfloat16().requires_grad_()):
        sum(losses(x)).backward()
        grads.append(x.grad.float())
    torch.testing.assert_close(grads[1], grads[0], rtol=0.05, atol=2e-3)
