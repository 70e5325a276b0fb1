"""The assembled Sparse4D on the small config: training step, stateful vs functional path, config checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.config.model import ModelConfig
from sparse4d.errors import DataError, InputFileError, SpecError
from sparse4d.model.denoising import CarriedDenoising, make_denoising_queries, retarget_carried
from sparse4d.model.sparse4d import Sparse4D
from sparse4d.model.unsupported import check_supported

from .model_helpers import random_anchors, small_config, synthetic_batch


@pytest.fixture(scope="module")
def anchor_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("anchors") / "anchor_init.npy"
    np.save(path, random_anchors(80))
    return str(path)


def test_training_forward_backward_two_frames(anchor_file: str) -> None:
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3)
    model.train()
    for frame in range(2):
        batch = synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        model.zero_grad()
        out = model(batch)
        losses = model.loss(out, batch)
        assert {"loss", "loss_cls_0", "loss_box_1", "loss_cns_1", "loss_yns_1", "loss_cls_dn_1", "loss_depth"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
        assert model.backbone.conv1.weight.grad is not None and model.backbone.conv1.weight.grad.abs().sum() > 0
        assert model.head.instance_bank.anchor.grad is not None
    temp_gnn = model.head.layers[model.head.operation_order.index("temp_gnn")]
    assert temp_gnn.attn.in_proj_weight.grad.abs().sum() > 0  # second frame attends to carried instances
    assert model.temporal_state is not None and bool(model.temporal_state.valid.all())


def test_forward_frame_equals_stateful_eval_and_ids_are_inherited(anchor_file: str) -> None:
    torch.manual_seed(1)
    cfg = small_config(anchor_file)
    cfg.head.decoder.score_threshold = 0.0  # every query is confident enough for an id
    model = Sparse4D.from_config(cfg, num_classes=3).eval()
    state = model.initial_state(1)
    num_temp = model.head.instance_bank.num_temp
    with torch.no_grad():
        for frame in range(3):
            batch = synthetic_batch(1, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
            dets = model.predict(batch)
            dt = torch.tensor([0.1 if frame else model.default_time_interval])
            outputs, new_state = model.forward_frame(batch["img"], batch["projection_mat"], batch["image_wh"], dt, batch["first_frame"], state)
            assert torch.allclose(outputs["scores_3d"][0][outputs["keep"][0]], dets[0]["scores_3d"], atol=1e-5)
            assert torch.equal(outputs["track_ids"][0][outputs["keep"][0]], dets[0]["track_ids"])
            assert dets[0]["boxes_3d"].shape[-1] == 10 and dets[0]["track_ids"].dtype == torch.int64
            carried = outputs["query_index"][0] < num_temp
            if frame > 0:  # carried queries keep the ids the state carried
                expected = state.track_ids[0][outputs["query_index"][0][carried]]
                assert torch.equal(outputs["track_ids"][0][carried], expected)
            ids = outputs["track_ids"][0]
            assert len(set(ids.tolist())) == len(ids)
            state = new_state
    assert torch.equal(model.temporal_state.track_ids, state.track_ids)


def test_config_checks() -> None:
    check_supported(ModelConfig())  # TAO defaults are accepted
    for key, value in [("use_reid_sampling", True), ("drop_out", 0.2), ("reid_dims", 8)]:
        cfg = small_config()
        setattr(cfg.head, key, value)
        with pytest.raises(SpecError, match=f"model.head.{key}"):
            check_supported(cfg)
    cfg = small_config()
    cfg.use_temporal_align = True
    with pytest.raises(SpecError, match="model.use_temporal_align"):
        check_supported(cfg)
    cfg = small_config()
    cfg.head.num_decoder = 3
    with pytest.raises(SpecError, match="model.head.num_decoder"):
        check_supported(cfg)
    cfg = small_config()
    cfg.neck.in_channels = [256, 512, 1024, 2048]
    with pytest.raises(SpecError, match="model.neck.in_channels"):
        Sparse4D.from_config(cfg, 3, anchors=random_anchors(64))


def test_missing_anchor_file_names_the_key(tmp_path) -> None:
    with pytest.raises(InputFileError, match="model.head.instance_bank.anchor"):
        Sparse4D.from_config(small_config(str(tmp_path / "nope.npy")), 3)


def test_bad_batches_are_clear_errors() -> None:
    model = Sparse4D.from_config(small_config(), 3, anchors=random_anchors(64)).eval()
    batch = synthetic_batch(1, num_cams=5)  # max_num_cams is 4
    with pytest.raises(DataError, match="max_num_cams"):
        model.predict(batch)
    batch = synthetic_batch(1)
    batch["img"] = batch["img"][..., :200]
    with pytest.raises(DataError, match="model.input_shape"):
        model.predict(batch)


def test_denoising_groups_and_targets() -> None:
    torch.manual_seed(0)
    gt = [torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], [5.0, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0]]), torch.zeros(0, 11)]
    labels = [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64)]
    ids = [torch.tensor([7, 8]), torch.zeros(0, dtype=torch.int64)]
    dn = make_denoising_queries(gt, labels, ids, num_groups=3, noise_scale=[2.0] * 3 + [0.5] * 8, max_dn_gt=8, add_neg_dn=True, reg_weights=torch.ones(11))
    assert dn is not None and dn.group_size == 4 and dn.num_queries == 12
    assert int((dn.cls_targets[0] >= 0).sum()) == 6 and int(dn.valid[0].sum()) == 12  # 2 positives per group
    assert not dn.valid[1].any()
    # carried group: instance 7 is still there, instance 8 left -> its query becomes background
    carried = CarriedDenoising(
        features=torch.zeros(2, 1, 4, 8), anchors=dn.anchors.reshape(2, 3, 4, 11)[:, :1],
        cls_targets=dn.cls_targets.reshape(2, 3, 4)[:, :1], valid=dn.valid.reshape(2, 3, 4)[:, :1], instance_ids=dn.instance_ids.reshape(2, 3, 4)[:, :1],
    )
    new_gt = [torch.tensor([[1.0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]]), torch.zeros(0, 11)]
    box, cls = retarget_carried(carried, new_gt, [torch.tensor([1]), labels[1]], [torch.tensor([7]), ids[1]])
    was7 = carried.instance_ids[0, 0] == 7
    assert bool((cls[0, 0][was7] == 1).all()) and bool((cls[0, 0][~was7] == -1).all())
    assert torch.allclose(box[0, 0][was7], new_gt[0].expand(int(was7.sum()), -1))


def test_forward_frame_traces_and_replays_two_frames() -> None:
    """The single-frame path traces once and the trace follows first_frame as data (no baked branch)."""
    import warnings

    from sparse4d.model.instance_bank import InstanceBankState

    torch.manual_seed(2)
    model = Sparse4D.from_config(small_config(), 3, anchors=random_anchors(64)).eval()

    class Frame(torch.nn.Module):
        def __init__(self, inner: Sparse4D) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, img, proj, wh, dt, first, *state):
            out, new_state = self.inner.forward_frame(img, proj, wh, dt, first, InstanceBankState.from_tuple(state))
            return (out["boxes_3d"], out["scores_3d"], out["track_ids"], out["keep"]) + new_state.as_tuple()

    wrapper = Frame(model)
    example = model.example_inputs(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example[:5] + example[5].as_tuple(), check_trace=False)
        state = model.initial_state(1).as_tuple()
        for frame in range(2):
            b = synthetic_batch(1, seed=frame)
            args = (b["img"], b["projection_mat"], b["image_wh"], torch.tensor([0.1]), torch.tensor([frame == 0])) + tuple(state)
            got, want = traced(*args), wrapper(*args)
            for x, y in zip(got, want):
                assert torch.allclose(x.double(), y.double(), atol=1e-5)
            state = want[4:]
        assert bool(state[-1].all())  # valid after a frame


def test_matching_started_during_the_forward_equals_matching_after_it(anchor_file: str) -> None:
    """The forward queues each decoder layer's matching as the layer is computed; the loss must get the
    same assignments as matching the finished outputs."""
    torch.manual_seed(2)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train()
    for frame in range(2):
        batch = synthetic_batch(2, num_gt=4, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        out = model(batch)
        assert out["matcher"].num_layers == len(out["classification"]) == 2
        started, labels, anchors = model._match_all_layers(out, out["targets"])
        after, labels_after, anchors_after = model._match_all_layers({**out, "matcher": None}, out["targets"])
        assert torch.equal(started, after) and bool((started >= 0).any())
        assert torch.equal(labels, labels_after) and torch.equal(torch.nan_to_num(anchors), torch.nan_to_num(anchors_after))
        model.loss(out, batch)


@pytest.mark.parametrize("training", [True, False])
def test_camera_geometry_stays_float32_under_bf16_autocast(anchor_file: str, monkeypatch: pytest.MonkeyPatch, training: bool) -> None:
    """The features are bf16 under autocast, the camera matrices must not follow them: rounded to
    bf16 they moved projected key points by up to ~11 px at 1408x512 (training forward and the
    functional inference path alike)."""
    import sparse4d.model.deformable as deformable

    seen = []
    project = deformable.project_points

    def recording(points, projection_mat, image_wh, *args, **kwargs):
        seen.append((points.dtype, projection_mat.dtype, image_wh.dtype))
        return project(points, projection_mat, image_wh, *args, **kwargs)

    monkeypatch.setattr(deformable, "project_points", recording)
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train(training)
    batch = synthetic_batch(2, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(training):
        if training:
            out = model(batch)
            assert out["classification"][-1].dtype == torch.bfloat16  # autocast is on
        else:
            img, proj, wh = batch["img"], batch["projection_mat"], batch["image_wh"]
            model.predict_frame(img, proj, wh, batch["timestamp"], batch["first_frame"], model.initial_state(2))
    assert seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen), seen


def test_packed_levels_feed_the_depth_loss(anchor_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the levels are packed (the fused kernel's buffer on CUDA), `encode_images` computes the
    depth loss from the packed copy: the same loss and backbone gradients as from the FPN maps."""
    from sparse4d.model.aggregation import PackedLevels

    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).double().train()
    batch = synthetic_batch(2)
    img, proj, gt_depth = batch["img"].double(), batch["projection_mat"].double(), batch["gt_depth"].double()
    results = []
    for pack in (False, True):
        if pack:
            monkeypatch.setattr(model.head, "prepare_levels", lambda maps, fused: PackedLevels.pack(maps))
        model.zero_grad()
        feats, levels, loss_depth = model.encode_images(img, proj, gt_depth)
        assert isinstance(levels, PackedLevels) == pack
        if pack:  # read from the packed copy (else autograd.grad finds the buffer unused)
            assert torch.autograd.grad(loss_depth, levels.packed, retain_graph=True)[0].abs().sum() > 0
            # and the maps leave as views of it: a compiled region gets no gradient of its own for them
            packed_storage = levels.packed.untyped_storage().data_ptr()
            assert all(m.untyped_storage().data_ptr() == packed_storage for m in [*feats, *levels.maps])
        loss_depth.backward()
        results.append((loss_depth.detach(), model.backbone.conv1.weight.grad.clone()))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-12)
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-10, atol=1e-12)


def _fresh_training_step(model: Sparse4D, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, every parameter gradient flattened) of one first-frame training step, with the same
    denoising noise and GridMask on every call."""
    model.reset_temporal_state()
    model.zero_grad()
    torch.manual_seed(1)
    loss = model.loss(model(batch), batch)["loss"]
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_packed_levels_train_like_the_maps(anchor_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step with packed levels (the maps handed on as views of the packed copy; on the CPU
    the reference aggregation reads them) gives the loss and gradients of one with plain maps."""
    from sparse4d.model.aggregation import PackedLevels

    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train()
    batch = synthetic_batch(2)
    results = []
    for pack in (False, True):
        if pack:
            monkeypatch.setattr(model.head, "prepare_levels", lambda maps, fused: PackedLevels.pack(maps))
        results.append(_fresh_training_step(model, batch))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    # float32 sums in another order (a few 1e-6 apart): compared against the largest gradient's scale
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5 * float(grad_a.abs().max()))


def test_a_gradient_sink_leaves_the_training_step_unchanged(anchor_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`head.gradient_sink` (opt-in) attaches a persistent sink to packed levels in training only. On
    the CPU the reference aggregation reads the maps (views of the packed copy, not detached), so the
    sink stays zero and every gradient is the one without it; the kernels' side is checked in the
    interpreter test."""
    from sparse4d.model.aggregation import PackedLevels

    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(anchor_file), num_classes=3).train()
    monkeypatch.setattr(model.head, "prepare_levels", lambda maps, fused: PackedLevels.pack(maps))
    batch = synthetic_batch(2)
    seen = []
    results = []
    for sink in (False, True):
        model.head.gradient_sink = sink
        results.append(_fresh_training_step(model, batch))
        seen.append(len(model.head._sinks))
    assert seen == [0, 1]
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-7)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert len(model.head._sinks) == 1  # no sink without gradients
