"""`train.compile`: compiled head regions in the trainer (CUDA only; the CPU trains eagerly)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import make_spec, tiny_overrides
from sparse4d.engine.checkpoint import list_checkpoints
from sparse4d.engine.compile import compile_for_training
from sparse4d.engine.train import run_train
from sparse4d.jobs.status_file import read_events
from sparse4d.model.sparse4d import Sparse4D
from tests.model.model_helpers import random_anchors, small_config


def compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def small_model(tmp_path: Path) -> Sparse4D:
    path = tmp_path / "anchor_init.npy"
    np.save(path, random_anchors(80))
    return Sparse4D.from_config(small_config(str(path)), num_classes=3)


def test_off_and_cpu_train_eagerly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = small_model(tmp_path)
    assert compile_for_training(model, "off", on_gpu=True) is False
    with caplog.at_level(logging.WARNING):
        assert compile_for_training(model, "reduce-overhead", on_gpu=False) is False
    assert "train.compile=reduce-overhead needs a CUDA GPU" in caplog.text
    assert not compiled(model.head.anchor_encoder)
    assert not any(compiled(layer) for layer in model.head.layers)


def test_on_a_gpu_the_log_says_the_first_steps_compile_for_minutes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """torch.compile wraps lazily, so this runs on the CPU: nothing compiles until a region is called."""
    model = small_model(tmp_path)
    with caplog.at_level(logging.INFO, logger="sparse4d.engine.compile"):
        assert compile_for_training(model, "reduce-overhead", on_gpu=True) is True
    assert "the first two training steps compile the regions (several minutes" in caplog.text


def test_the_key_is_validated() -> None:
    from sparse4d.config import validate_spec

    report = validate_spec("train", {}, overrides={"train.compile": "max-autotune"})
    assert not report.valid and any(e.key == "train.compile" for e in report.errors)


@pytest.mark.gpu
def test_reduce_overhead_training_validates_and_checkpoints(converted, tmp_path: Path) -> None:
    """Compiled regions replayed from CUDA graphs in Lightning's loop, validation (which captures whole
    frames in its own graph) running them eagerly, finite losses, checkpoints with the usual keys."""
    results = tmp_path / "compiled"
    run_train(make_spec("train", tiny_overrides(converted, results, **{"dataset.batch_size": 2, "train.compile": "reduce-overhead",
                                                                     "train.precision": "bf16"})))
    names = [p.name for _, _, p in list_checkpoints(results)]
    assert names == ["model_epoch_001_step_00004.pth", "model_epoch_002_step_00008.pth"]
    state = torch.load(results / names[-1], weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # compiled in place: plain keys
    events = read_events(results / "status.json")
    assert [e["status"] for e in events] == ["STARTED", "RUNNING", "RUNNING", "SUCCESS"]
    for event in events[1:3]:
        assert math.isfinite(event["kpi"]["loss"]) and 0.0 <= event["kpi"]["val_mAP"] <= 1.0


def test_head_and_losses_trace_into_one_graph_each(tmp_path: Path) -> None:
    """What `compile_regions` relies on: the whole head (all decoder layers, denoising and carried groups)
    and the losses of all layers trace without a graph break, on a first and on a later frame."""
    import torch._dynamo as dynamo

    from tests.model.model_helpers import synthetic_batch

    torch.manual_seed(0)
    model = small_model(tmp_path).train()
    model.match_in_forward = False
    head_forward, decoder_losses = model.head.forward, model.decoder_losses
    calls: dict[str, tuple] = {}

    def record_head(*args, **kwargs):
        calls["head"] = (args, kwargs)
        return head_forward(*args, **kwargs)

    def record_losses(*args):
        calls["losses"] = (args, {})
        return decoder_losses(*args)

    model.head.forward, model.decoder_losses = record_head, record_losses
    for frame in range(2):
        batch = synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        model.loss(model(batch), batch)["loss"].backward()
        for name, fn in (("head", head_forward), ("losses", decoder_losses)):
            args, kwargs = calls[name]
            explained = dynamo.explain(fn)(*args, **kwargs)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (frame, name, explained.break_reasons)
    assert calls["head"][1].get("carried_dn") is not None  # the later frame did carry denoising groups


def test_decoder_layers_share_one_compiled_region(tmp_path: Path) -> None:
    """`compile_regions` compiles one function per decoder layer, not per module, and the layers must
    reuse its graphs: with four decoder layers, three graphs (the single-frame first layer, the first
    layer after the merge, whose temporal keys are embedded from the carried anchors, and the rest),
    no graph breaks, and nothing new on a later frame with carried instances and denoising groups."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from tests.model.model_helpers import synthetic_batch

    path = tmp_path / "anchor_init.npy"
    np.save(path, random_anchors(80))
    order = ["deformable", "ffn", "norm", "refine"] + ["temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"] * 3
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(str(path), num_decoder=4, operation_order=order), num_classes=3).train()
    dynamo.reset()
    counters.clear()
    model.head.decoder_layer = torch.compile(model.head.decoder_layer, backend="eager")
    graphs = []
    for frame in range(2):
        batch = synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        out = model(batch)
        model.loss(out, batch)["loss"].backward()
        assert len(out["prediction"]) == 4
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [3, 3]
    assert not counters["graph_break"]
    dynamo.reset()


@pytest.mark.parametrize("packed", [False, True], ids=["maps", "packed"])
def test_image_encoding_is_one_region_with_the_depth_loss(tmp_path: Path, packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """`encode_images` (normalisation of uint8 images, GridMask, backbone, neck, packed levels,
    dense-depth loss) traces as one graph without breaks; its features are the network's on the
    normalised, masked images and its depth loss is the depth branch's loss on them. Packed (the
    fused kernel's buffer, as on CUDA) the maps it returns are views of the packed copy."""
    import torch._dynamo as dynamo

    from sparse4d.batch import normalized_images
    from sparse4d.model.aggregation import PackedLevels
    from sparse4d.model.grid_mask import GridMask, hide_grid
    from tests.model.model_helpers import synthetic_batch, with_uint8_images

    torch.manual_seed(0)
    model = small_model(tmp_path).train()
    if packed:
        monkeypatch.setattr(model.head, "prepare_levels", lambda maps, fused: PackedLevels.pack(maps))
    batch = with_uint8_images(synthetic_batch(2, seed=3), 3)
    img, projection, gt_depth = batch["img"], batch["projection_mat"], batch["gt_depth"]
    mean, std = batch["img_mean"], batch["img_std"]
    grids = GridMask(prob=1.0).draw(img)
    explained = dynamo.explain(model.encode_images)(img, projection, gt_depth, mean=mean, std=std, grids=grids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    feats, levels, loss_depth = model.encode_images(img, projection, gt_depth, mean=mean, std=std, grids=grids)
    assert isinstance(levels, PackedLevels) == packed
    if packed:
        assert all(f.untyped_storage().data_ptr() == levels.packed.untyped_storage().data_ptr() for f in [*feats, *levels.maps])
    network_input = hide_grid(normalized_images(batch), grids)
    assert bool((network_input == 0).any())  # the grid did hide pixels
    expected_feats = model.extract_features(network_input)
    for got, want in zip(feats, expected_feats):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    expected = model.depth_branch.loss(model.depth_branch(expected_feats, projection[..., 0, 0]), gt_depth)
    assert loss_depth is not None and float(loss_depth.detach()) > 0
    torch.testing.assert_close(loss_depth, expected, rtol=0, atol=0)
    assert (levels.maps if packed else levels) is feats  # unpacked (the CPU): the maps themselves
    assert model.encode_images(normalized_images(batch))[2] is None  # float images, no targets: no depth loss


def test_matching_costs_are_one_region(tmp_path: Path) -> None:
    """`matching_costs` (one layer's Hungarian costs) traces as one graph without breaks, takes bf16
    outputs and GT with unknown (NaN) velocities, and compiled gives the eager costs in float32."""
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = small_model(tmp_path).train()
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 40, 3, generator=g) * 2).bfloat16()
    boxes = (torch.randn(2, 40, 11, generator=g) * 3).bfloat16()
    gt_labels = torch.randint(0, 3, (2, 7), generator=g)
    gt_anchors = torch.randn(2, 7, 11, generator=g) * 3
    gt_anchors[0, 2, 8:] = float("nan")
    explained = dynamo.explain(model.matching_costs)(logits, boxes, gt_labels, gt_anchors)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    eager = model.matching_costs(logits, boxes, gt_labels, gt_anchors)
    assert eager.shape == (2, 40, 7) and eager.dtype == torch.float32 and bool(torch.isfinite(eager).all())
    dynamo.reset()
    compiled = torch.compile(model.matching_costs, backend="aot_eager")(logits, boxes, gt_labels, gt_anchors)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    dynamo.reset()


def test_a_varying_gt_count_settles_into_dynamic_shapes(tmp_path: Path) -> None:
    """Real batches differ in GT count, so the denoising group size and the matching width change from
    step to step. The regions must recompile once with dynamic shapes and then stop: a new graph per
    count would soon hit dynamo's recompile limit and leave training eager."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from sparse4d.engine.compile import compile_regions
    from tests.model.model_helpers import synthetic_batch

    torch.manual_seed(0)
    model = small_model(tmp_path).train()
    dynamo.reset()
    counters.clear()
    compile_regions(model, backend="eager")
    graphs = []
    for frame, num_gt in enumerate([3, 5, 4, 7, 2, 8]):
        batch = synthetic_batch(2, num_gt=num_gt, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        model.loss(model(batch), batch)["loss"].backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[2] == graphs[-1], graphs  # nothing new after the first frames
    assert not counters["graph_break"]
    dynamo.reset()


def test_compiled_regions_train_like_the_eager_model(tmp_path: Path) -> None:
    """All four regions of `compile_regions` (backend aot_eager: AOTAutograd's forward/backward split
    with eager kernels, what Inductor receives) over three streamed frames, carried instances and
    denoising groups, uint8 images and GridMask included: the losses and every gradient equal the
    eager model's, no graph breaks. `compile_regions` stacks the anchor encoder's branches."""
    import copy

    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from sparse4d.engine.compile import compile_regions
    from tests.model.model_helpers import synthetic_batch, with_uint8_images

    torch.manual_seed(0)
    eager = small_model(tmp_path).train()
    compiled_model = copy.deepcopy(eager)
    dynamo.reset()
    counters.clear()
    assert compile_regions(compiled_model, backend="aot_eager") == 4
    assert compiled_model.head.anchor_encoder.stack_branches and not eager.head.anchor_encoder.stack_branches
    eager.head.anchor_encoder.stack_branches = True  # the same arithmetic (tests/model/test_anchor_encoder.py: stacked == branches)
    for frame in range(3):
        batch = with_uint8_images(synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame), frame)
        results = []
        for model in (eager, compiled_model):
            torch.manual_seed(10 + frame)  # the same GridMask and denoising noise for both
            losses = model.loss(model(batch), batch)
            losses["loss"].backward()
            results.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
            model.zero_grad(set_to_none=True)
        (losses_e, grads_e), (losses_c, grads_c) = results
        assert losses_e.keys() == losses_c.keys() and "loss_depth" in losses_c
        for name in losses_e:
            torch.testing.assert_close(losses_c[name], losses_e[name], rtol=1e-5, atol=1e-6, msg=f"frame {frame} {name}")
        assert grads_e.keys() == grads_c.keys()
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=f"frame {frame} {name}")
    assert counters["stats"]["unique_graphs"] >= 4  # the regions did run compiled
    assert not counters["graph_break"]
    dynamo.reset()


def test_only_the_losses_can_leave_cuda_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`graphed_losses=False` (a benchmark A/B) compiles the losses without mode="reduce-overhead";
    every other graphed region keeps it, and the matching costs never replay from a graph."""
    from sparse4d.engine import compile as compile_module

    model = small_model(tmp_path)
    for graphed_losses in (True, False):
        calls: dict[str, dict] = {}

        def record(fn, **kwargs):
            calls[fn.__name__] = kwargs
            return fn

        monkeypatch.setattr(compile_module.torch, "compile", record)
        compile_module.compile_regions(model, mode="reduce-overhead", graphed_losses=graphed_losses, combo_kernels=False)
        assert calls["encode_images"] == calls["decoder_layer"] == {"mode": "reduce-overhead"}
        assert calls["decoder_losses"] == ({"mode": "reduce-overhead"} if graphed_losses else {})
        assert calls["matching_costs"] == {}


def test_regions_compile_with_combo_kernels_in_their_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default every region gets Inductor's combo kernels on top of its mode's own options (CUDA
    graphs for reduce-overhead, none for the matching costs), and torch.compile accepts them."""
    from sparse4d.engine import compile as compile_module

    graphed = {"options": {"triton.cudagraphs": True, "combo_kernels": True}}
    plain = {"options": {"combo_kernels": True}}
    assert compile_module.inductor_options("reduce-overhead") == graphed
    assert compile_module.inductor_options(None) == compile_module.inductor_options("default") == plain
    assert compile_module.inductor_options("reduce-overhead", combo_kernels=False) == {"mode": "reduce-overhead"}
    assert compile_module.inductor_options("default", combo_kernels=False) == {}
    for kwargs in (graphed, plain):
        torch.compile(lambda x: x + 1, **kwargs)  # Inductor checks option names when the wrapper is built

    model = small_model(tmp_path)
    calls: dict[str, dict] = {}

    def record(fn, **kwargs):
        calls[fn.__name__] = kwargs
        return fn

    monkeypatch.setattr(compile_module.torch, "compile", record)
    compile_module.compile_regions(model, mode="reduce-overhead")
    assert calls["encode_images"] == calls["decoder_layer"] == calls["decoder_losses"] == graphed
    assert calls["matching_costs"] == plain
