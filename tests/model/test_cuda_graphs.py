"""CUDA-graph inference: whole eval frames replayed from a graph equal the eager model.

The CPU tests check the pieces the graph relies on (the pure eval frame, fixed-size carried
denoising groups); the GPU test compares replays with eager runs of the same weights and data.
"""
from __future__ import annotations

import pytest
import torch

from sparse4d.engine.runloop import move_batch
from sparse4d.model.denoising import CarriedDenoising
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


def _model(seed: int = 0) -> Sparse4D:
    torch.manual_seed(seed)
    return Sparse4D.from_config(small_config(), num_classes=3, anchors=random_anchors(64))


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
            batch = move_batch(synthetic_batch(2, first_frame=frame in (0, 3), timestamp=0.1 * frame, seed=frame), torch.device("cuda"))
            eager = model(batch)["decoded"]
            replayed = stream(batch)
            for name, value in eager.items():
                assert torch.allclose(value.float(), replayed[name].float(), atol=1e-4), (frame, name)
            assert torch.equal(eager["track_ids"], replayed["track_ids"])
    assert stream.num_graphs == 1
