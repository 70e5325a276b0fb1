"""Track-consistent matching: a carried query keeps the object it was matched to in the previous frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Sparse4D:
    path = tmp_path_factory.mktemp("anchors") / "anchor_init.npy"
    np.save(path, random_anchors(80))
    torch.manual_seed(0)
    return Sparse4D.from_config(small_config(str(path)), num_classes=3).train()


def test_carried_query_takes_back_its_object_and_the_displaced_query_swaps(model: Sparse4D) -> None:
    t = model.head.instance_bank.num_temp
    a = model.head.instance_bank.num_anchor
    layers = len([op for op in model.head.operation_order if op == "refine"])
    model._carried_targets = torch.full((1, t), -1, dtype=torch.int64)
    model._carried_targets[0, 0] = 5  # carried query 0 was matched to instance 5 last frame
    ids = torch.tensor([[7, 5]])  # this frame: GT 0 is instance 7, GT 1 is instance 5
    assigned = torch.full((layers, 1, a), -1, dtype=torch.int64)
    assigned[:, 0, 0] = 0  # the solver gave carried query 0 the other object...
    assigned[:, 0, t + 2] = 1  # ...and instance 5 to a fresh query
    out = model._keep_carried_targets(assigned, model._carried_targets, ids, torch.tensor([True]))
    single = model.head.num_single_frame_decoder
    assert torch.equal(out[:single], assigned[:single])  # before the merge nothing is carried
    for layer in range(single, layers):
        assert out[layer, 0, 0] == 1 and out[layer, 0, t + 2] == 0  # swapped
        assigned_gt = out[layer, 0][out[layer, 0] >= 0]
        assert len(assigned_gt) == len(set(assigned_gt.tolist())) == 2  # still one query per object


def test_no_history_or_vanished_object_leaves_the_solver_alone(model: Sparse4D) -> None:
    t = model.head.instance_bank.num_temp
    a = model.head.instance_bank.num_anchor
    layers = len([op for op in model.head.operation_order if op == "refine"])
    model._carried_targets = torch.full((1, t), 9, dtype=torch.int64)  # instance 9 left the scene
    assigned = torch.randint(-1, 2, (layers, 1, a))
    out = model._keep_carried_targets(assigned, model._carried_targets, torch.tensor([[7, 5]]), torch.tensor([True]))
    assert torch.equal(out, assigned)
    model._carried_targets[0, 0] = 5
    out = model._keep_carried_targets(assigned, model._carried_targets, torch.tensor([[7, 5]]), torch.tensor([False]))  # slot restarted
    assert torch.equal(out, assigned)


def test_training_remembers_targets_of_the_carried_queries(model: Sparse4D) -> None:
    model.reset_temporal_state()
    for frame in range(2):
        # 12 objects: with half the queries carried, some carried query is matched whatever the random
        # draws (with 3, none was in about one draw in eight)
        batch = synthetic_batch(1, num_gt=12, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        losses = model.loss(model(batch), batch)
        assert torch.isfinite(losses["loss"])
        carried = model._carried_targets
        assert carried is not None and carried.shape == (1, model.head.instance_bank.num_temp)
        known = set(batch["instance_ids"][0].tolist()) | {-1}
        assert set(carried[0].tolist()) <= known
        assert (carried[0] >= 0).any()  # some carried query was matched to a real object
