"""Temporal denoising: which targets each decoder layer learns, and carried groups that stay put at 30 fps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.model.keypoints import KeyPointsGenerator
from sparse4d.model.refinement import LOG_SIZE_MAX, LOG_SIZE_MIN, BoxRefinement
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


@pytest.fixture(scope="module")
def anchor_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("anchors") / "anchor_init.npy"
    np.save(path, random_anchors(80))
    return str(path)


def test_layers_before_the_merge_learn_the_frames_own_denoising_targets(anchor_file: str) -> None:
    """Upstream's split: layers up to the merge answer to this frame's groups, later layers to the groups
    with last frame's carried ones. The GT count changes between frames, so the two differ in validity."""
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train()
    first = synthetic_batch(1, num_gt=3, seed=0, first_frame=True, timestamp=0.0)
    model.loss(model(first), first)
    carried = model._carried_dn
    assert carried is not None
    second = synthetic_batch(1, num_gt=5, seed=1, first_frame=False, timestamp=1 / 30)
    out = model(second)
    losses = model.loss(out, second)

    own, merged = out["layer_dn"][0], out["layer_dn"][-1]
    m = own.group_size
    assert m == 10 and bool(own.valid.all())  # 5 GT, positive and negative copies: every slot is real
    # the first group after the merge is last frame's carried group: 3 positives + 3 negatives, then padding
    assert merged.valid[0, :m].tolist() == [True] * 6 + [False] * 4
    assert merged.instance_ids[0, :3].tolist() == carried.instance_ids[0, 0, :3].tolist()

    a = model.head.instance_bank.num_anchor
    cls, box, quality = out["classification"][0], out["prediction"][0], out["quality"][0]

    def layer0(dn):
        return model.denoising_losses(cls[:, a:], box[:, a:], quality[:, a:], dn.valid, dn.cls_targets, dn.box_targets)

    expected, wrong = layer0(own), layer0(merged)
    assert torch.allclose(losses["loss_cls_dn_0"], expected["loss_cls"])
    assert torch.allclose(losses["loss_box_dn_0"], expected["loss_box"])
    assert not torch.allclose(expected["loss_cls"], wrong["loss_cls"])  # the check can tell the two apart


def test_refinement_starts_by_predicting_no_motion() -> None:
    """Velocity = predicted translation / frame interval: at 30 fps any initial output is 30x amplified."""
    torch.manual_seed(0)
    refine = BoxRefinement(64, num_classes=3)
    anchor = torch.randn(2, 50, 11)
    out, _, _ = refine(torch.randn(2, 50, 64), anchor, torch.randn(2, 50, 64), torch.full((2,), 1 / 30))
    assert torch.equal(out[..., 8:], anchor[..., 8:])
    assert not torch.allclose(out[..., :3], anchor[..., :3])  # position is still refined


def test_carried_denoising_groups_do_not_run_away_at_30_fps(anchor_file: str) -> None:
    """A static scene streamed at 30 fps: each frame's carried groups restart from last frame's output.
    With velocity read off random initial outputs they moved tens of metres per second and the
    denoising box loss grew until bf16 training diverged."""
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    speeds = []
    for frame in range(8):
        batch = synthetic_batch(1, num_gt=8, seed=0, first_frame=frame == 0, timestamp=frame / 30)
        batch["gt_bboxes_3d"][0][:, 7:9] = 0.0  # nothing moves
        losses = model.loss(model(batch), batch)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 25.0)
        optimizer.step()
        optimizer.zero_grad()
        speeds.append(float(model._carried_dn.anchors[..., 8:10].norm(dim=-1).mean()))
    assert max(speeds) < 3.0, speeds


def test_refined_sizes_stay_finite_when_refined_frame_after_frame() -> None:
    """Carried negatives have no box loss; refined every frame their log sizes drifted past exp()'s range."""
    torch.manual_seed(0)
    refine = BoxRefinement(64, num_classes=3)
    keypoints = KeyPointsGenerator(64, [[0.0, 0.0, 0.0], [0.45, 0.0, 0.0]], num_learnable_pts=2)
    with torch.no_grad():
        refine.layers[-2].bias[3:6] = 10.0  # every refinement grows each side e^10-fold
    anchor = torch.zeros(1, 4, 11)
    anchor[..., 7] = 1.0
    feature = torch.randn(1, 4, 64)
    for _ in range(12):
        anchor, _, _ = refine(feature, anchor, torch.zeros(1, 4, 64), torch.full((1,), 1 / 30))
    assert torch.allclose(anchor[..., 3:6], torch.full_like(anchor[..., 3:6], LOG_SIZE_MAX))
    assert torch.isfinite(keypoints(anchor, feature)).all()
    with torch.no_grad():
        refine.layers[-2].bias[3:6] = -10.0
    shrunk, _, _ = refine(feature, anchor, torch.zeros(1, 4, 64), torch.full((1,), 1 / 30))
    assert float(shrunk[..., 3:6].min()) >= LOG_SIZE_MIN - 1e-5
