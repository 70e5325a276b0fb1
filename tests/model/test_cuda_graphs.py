"""CUDA-graph paths: the graphed training head and the graphed inference stream equal the eager model.

The CPU tests check the pieces graphs rely on (fixed-shape denoising padding, the pure eval frame);
the GPU tests compare replayed graphs with eager runs of the same weights and data.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparse4d.model.denoising import CarriedDenoising, denoising_group_bucket, make_denoising_queries
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


def _to(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else [x.to(device) for x in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
            for k, v in batch.items()}


def _model(seed: int = 0) -> Sparse4D:
    torch.manual_seed(seed)
    model = Sparse4D.from_config(small_config(), num_classes=3, anchors=random_anchors(64))
    for module in model.modules():  # dropout draws differ between a replay and an eager run
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def test_group_bucket_rounds_up_to_powers_of_two_within_limits() -> None:
    assert [denoising_group_bucket(n, 128) for n in (0, 1, 8, 9, 16, 17, 100, 128, 300)] == [8, 8, 8, 16, 16, 32, 128, 128, 128]
    assert denoising_group_bucket(5, 4) == 4


def test_padded_denoising_slots_are_invalid_background() -> None:
    torch.manual_seed(0)
    anchors = [torch.randn(3, 11), torch.randn(1, 11)]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1])]
    ids = [torch.tensor([5, 6, 7]), torch.tensor([9])]
    dn = make_denoising_queries(anchors, labels, ids, num_groups=2, noise_scale=[1.0] * 11, max_dn_gt=16, add_neg_dn=True,
                                reg_weights=torch.ones(11), slots_per_copy=8)
    assert dn is not None and dn.group_size == 16 and dn.anchors.shape == (2, 32, 11)
    valid = dn.valid.reshape(2, 2, 16)
    # slot k * 8 + j is copy k of GT j: only the first len(gt) slots of each copy are valid
    assert valid[0, :, :3].all() and valid[0, :, 8:11].all() and valid[1, :, 0].all() and valid[1, :, 8].all()
    assert int(valid[0].sum()) == 2 * 6 and int(valid[1].sum()) == 2 * 2
    cls = dn.cls_targets.reshape(2, 2, 16)
    assert (cls[~valid] == -1).all() and (dn.instance_ids.reshape(2, 2, 16)[~valid] == -1).all()
    # each valid group still assigns every GT exactly once
    for g in range(2):
        assert sorted(dn.instance_ids.reshape(2, 2, 16)[0, g][dn.instance_ids.reshape(2, 2, 16)[0, g] >= 0].tolist()) == [5, 6, 7]


def test_carried_denoising_resizes_with_background_padding() -> None:
    carried = CarriedDenoising(torch.ones(1, 1, 4, 8), torch.ones(1, 1, 4, 11), torch.zeros(1, 1, 4, dtype=torch.long),
                               torch.ones(1, 1, 4, dtype=torch.bool), torch.arange(4)[None, None])
    big = carried.resized(6)
    assert big.features.shape == (1, 1, 6, 8) and (big.features[:, :, 4:] == 0).all()
    assert (big.cls_targets[:, :, 4:] == -1).all() and not big.valid[:, :, 4:].any() and (big.instance_ids[:, :, 4:] == -1).all()
    small = carried.resized(2)
    assert small.anchors.shape == (1, 1, 2, 11) and small.instance_ids.tolist() == [[[0, 1]]]


def test_predict_frame_is_the_eval_forward() -> None:
    model = _model().eval()
    state = model.initial_state(2)
    with torch.no_grad():
        for frame in range(3):
            batch = synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
            eager = model(batch)["decoded"]
            decoded, state = model.predict_frame(batch["img"], batch["projection_mat"], batch["image_wh"], batch["timestamp"], batch["first_frame"], state)
            for name, value in eager.items():
                assert torch.equal(value, decoded[name]), name


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.gpu
def test_graphed_head_trains_like_the_eager_head() -> None:
    from sparse4d.model.fused_aggregation import enable_fused_aggregation

    enable_fused_aggregation()
    eager = _model().cuda().train()
    graphed = copy.deepcopy(eager)
    graphed.use_cuda_graphs()
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (eager, graphed)]
    for step in range(4):  # step 0: no history; later steps carry instances and denoising groups
        batch = _to(synthetic_batch(2, num_gt=8, first_frame=step == 0, timestamp=0.1 * step, seed=step), "cuda")
        results = []
        for model, opt in zip((eager, graphed), opts):
            torch.manual_seed(100 + step)  # same denoising noise for both
            opt.zero_grad(set_to_none=True)
            losses = model.loss(model(batch), batch)
            losses["loss"].backward()
            results.append((losses, _grads(model)))
            opt.step()
        (loss_e, grad_e), (loss_g, grad_g) = results
        assert loss_e.keys() == loss_g.keys()
        for name in loss_e:
            assert torch.allclose(loss_e[name], loss_g[name], rtol=1e-4, atol=1e-5), (step, name, loss_e[name], loss_g[name])
        assert grad_e.keys() == grad_g.keys()
        for name in grad_e:
            assert torch.allclose(grad_e[name], grad_g[name], rtol=1e-3, atol=1e-5), (step, name)
    assert graphed.graphed_head is not None and graphed.graphed_head.num_graphs == 2  # first frame, then carried


@pytest.mark.gpu
def test_graphed_stream_predicts_like_the_eager_model() -> None:
    from sparse4d.model.fused_aggregation import enable_fused_aggregation
    from sparse4d.model.graphed_stream import GraphedStream

    enable_fused_aggregation()
    model = _model().cuda().eval()
    stream = GraphedStream(model)
    model.reset_temporal_state()
    with torch.no_grad():
        for frame in range(5):
            batch = _to(synthetic_batch(2, first_frame=frame in (0, 3), timestamp=0.1 * frame, seed=frame), "cuda")
            eager = model(batch)["decoded"]
            replayed = stream(batch)
            for name, value in eager.items():
                assert torch.allclose(value.float(), replayed[name].float(), atol=1e-4), (frame, name)
            assert torch.equal(eager["track_ids"], replayed["track_ids"])
    assert stream.num_graphs == 1
