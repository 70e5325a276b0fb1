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

from .model_helpers import random_anchors, small_config, synthetic_batch, with_uint8_images


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
@pytest.mark.parametrize("uint8_images", [False, True])
def test_graphed_stream_predicts_like_the_eager_model(uint8_images: bool) -> None:
    """Also with uint8 images plus their mean/std (the dataset's batches): normalised on the GPU before capture."""
    from sparse4d.model.fused_aggregation import enable_fused_aggregation
    from sparse4d.model.graphed_stream import GraphedStream

    enable_fused_aggregation()
    model = _model().cuda().eval()
    stream = GraphedStream(model)
    model.reset_temporal_state()
    with torch.no_grad():
        for frame in range(5):
            batch = synthetic_batch(2, first_frame=frame in (0, 3), timestamp=0.1 * frame, seed=frame)
            batch = move_batch(with_uint8_images(batch, frame) if uint8_images else batch, torch.device("cuda"))
            eager = model(batch)["decoded"]
            replayed = stream(batch)
            for name, value in eager.items():
                assert torch.allclose(value.float(), replayed[name].float(), atol=1e-4), (frame, name)
            assert torch.equal(eager["track_ids"], replayed["track_ids"])
    assert stream.num_graphs == 1


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        if hasattr(module, "attn_drop"):
            module.attn_drop = 0.0
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("gradient_sink", [False, True], ids=["autograd-sums", "gradient-sink"])
def test_reduce_overhead_compiled_head_trains_like_eager(gradient_sink: bool) -> None:
    """Head regions replayed from CUDA graphs (torch.compile mode="reduce-overhead") train like the eager
    model over streamed frames: the carried state and denoising groups must not alias graph outputs that
    the next step overwrites, and the fused kernel must not depend on where its inputs live.

    Only the head is compiled here: the compiled backbone's features differ from eager by ~1e-6, which
    can flip a near-tied Hungarian assignment, and its fp32 BatchNorm gradients are only ~1e-3 accurate
    either way; together that moves the gradients by percents with nothing wrong, so the backbone has its
    own test below, against float64."""
    import copy

    from sparse4d.engine.compile import compile_regions
    from sparse4d.model.fused_aggregation import enable_fused_aggregation

    enable_fused_aggregation()
    eager = _no_dropout(_model().cuda().train())
    compiled = copy.deepcopy(eager)
    compile_regions(compiled, mode="reduce-overhead", backbone=False)
    # the sink: the layers' graphed backwards add into one persistent buffer (its address captured)
    compiled.head.gradient_sink = gradient_sink
    for model in (eager, compiled):
        model.reset_temporal_state()
    for frame in range(4):
        batch = move_batch(synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame), torch.device("cuda"))
        losses = []
        for model in (eager, compiled):
            torch.compiler.cudagraph_mark_step_begin()
            torch.manual_seed(frame)  # the same denoising noise for both
            model.zero_grad(set_to_none=True)
            loss = model.loss(model(batch), batch)["loss"]
            loss.backward()
            losses.append(loss.detach())
        assert torch.allclose(losses[0], losses[1], rtol=1e-3, atol=1e-4), (frame, losses)
        grads = [torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]) for m in (eager, compiled)]
        assert torch.linalg.vector_norm(grads[0] - grads[1]) <= 1e-3 * torch.linalg.vector_norm(grads[0]), frame
    assert len(compiled.head._sinks) == int(gradient_sink)
    from sparse4d.model import fused_aggregation

    # the graphed kernel calls read the level table the eager forward kept, not fills captured per call
    assert any(device.type == "cuda" for _, device in fused_aggregation._KEPT_TABLES)


@pytest.mark.gpu
def test_reduce_overhead_compiled_backbone_and_neck_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled backbone and neck (trainable BatchNorm, CUDA-graph replays) give the eager features,
    gradients and BatchNorm running statistics, step after step, under a smooth loss.

    Both fp32 runs are scored against a float64 eager run: train-mode BatchNorm gradients cancel so much
    that eager fp32 itself is ~1e-3 away from float64, so the compiled run may be as far, not farther.
    TF32 is off, or cuDNN's choice of algorithm alone would move the features by ~1e-3."""
    import copy

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager = _model()
    nets = {"fp32": torch.nn.Sequential(eager.backbone, eager.neck).cuda().train()}
    nets["float64"] = copy.deepcopy(nets["fp32"]).double()
    nets["compiled"] = copy.deepcopy(nets["fp32"])
    for module in nets["compiled"]:
        module.compile(mode="reduce-overhead")
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        images = torch.randn(4, 3, 128, 256, generator=generator, dtype=torch.float64).cuda()
        results = {}
        for name, net in nets.items():
            torch.compiler.cudagraph_mark_step_begin()
            net.zero_grad(set_to_none=True)
            dtype = next(net.parameters()).dtype
            levels = net(images.to(dtype))
            loss = sum((level * torch.linspace(-1, 1, level.numel(), device="cuda", dtype=dtype).view_as(level)).sum() for level in levels)
            loss.backward()
            results[name] = [torch.cat([t.detach().double().flatten() for t in tensors])
                             for tensors in (levels, [p.grad for p in net.parameters()], list(net.buffers()))]

        def error(name: str, index: int) -> float:
            reference = results["float64"][index]
            return float(torch.linalg.vector_norm(results[name][index] - reference) / torch.linalg.vector_norm(reference))

        for index, what in enumerate(("features", "gradients", "running statistics")):
            assert error("compiled", index) <= 2 * error("fp32", index) + 1e-6, (step, what, error("compiled", index), error("fp32", index))
