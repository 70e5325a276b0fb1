"""Exports sized by the checkpoint (cameras, temporal instances) run in ONNX Runtime; bad shapes name the key."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparse4d.engine.export import run_export
from sparse4d.engine.onnx_graph import INPUT_NAMES, OUTPUT_NAMES
from sparse4d.engine.onnx_runner import OnnxFrameRunner
from sparse4d.errors import SpecError

from .conftest import HEIGHT, WIDTH, build_checkpoint, data_overrides, make_spec, tiny_model_overrides

SMALL_W, SMALL_H = 64, 32  # smallest input the ResNet + 3-level FPN takes


def random_anchors(count: int) -> np.ndarray:
    rng = np.random.default_rng(count)
    a = np.zeros((count, 11), np.float32)
    a[:, :2] = rng.uniform(-10, 10, (count, 2))
    a[:, 3:6] = np.log([0.6, 0.6, 1.7])
    a[:, 7] = 1.0
    return a


def export(tmp_path, converted, checkpoint, *, width=SMALL_W, height=SMALL_H, **extra):
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "export"))
    overrides.update({"export.checkpoint": str(checkpoint), "export.onnx_file": "model.onnx", "export.on_cpu": True,
                      "export.input_width": width, "export.input_height": height})
    overrides.update(extra)
    return run_export(make_spec("export", overrides))


@pytest.mark.parametrize(("cameras", "num_temp"), [(2, 100), (6, 100), (20, 100), (2, 600)])
def test_export_takes_camera_and_instance_counts_from_the_checkpoint(tmp_path, converted, cameras, num_temp):
    num_anchor = num_temp + 8
    checkpoint, _, _ = build_checkpoint(tmp_path, converted, embed=16, cameras=cameras, num_anchor=num_anchor, num_temp=num_temp,
                                        anchors=random_anchors(num_anchor))
    path = export(tmp_path, converted, checkpoint)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == INPUT_NAMES
    assert [o.name for o in proto.graph.output] == OUTPUT_NAMES
    runner = OnnxFrameRunner(path)
    assert runner.num_cams == cameras
    assert runner.inputs["prev_instance_feature"].shape == [1, num_temp, 16]
    rng = np.random.default_rng(0)
    wh = np.tile(np.array([[[SMALL_W, SMALL_H]]], np.float32), (1, cameras, 1))
    proj = np.tile(np.eye(4, dtype=np.float32), (1, cameras, 1, 1))
    proj[..., 2, 3] = 5.0  # points in front of every camera
    for frame in range(2):
        out = runner.run_frame(rng.standard_normal((1, cameras, 3, SMALL_H, SMALL_W)).astype(np.float32), proj, wh,
                               timestamp=0.5 * frame, first_frame=frame == 0, tracking_threshold=0.0)
        assert out["boxes_3d"].shape == (1, min(num_anchor, 30), 10)
        assert np.isfinite(out["boxes_3d"]).all() and np.isfinite(out["scores_3d"]).all()
    assert runner.state["prev_track_id"].shape == (1, num_temp)
    # threshold 0: every query got an id; the second frame's carried instances keep theirs
    assert (runner.state["prev_track_id"] >= 0).all()
    assert int(runner.state["prev_next_track_id"][0]) == num_anchor + (num_anchor - num_temp)


@pytest.mark.parametrize(("extra", "key"), [
    ({"export.input_width": 100}, "export.input_width"),
    ({"export.input_height": 48}, "export.input_height"),
    ({"export.opset_version": 15}, "export.opset_version"),
])
def test_export_that_does_not_fit_names_the_key(tmp_path, converted, extra, key):
    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    with pytest.raises(SpecError) as info:
        export(tmp_path, converted, checkpoint, **{"export.input_width": WIDTH, "export.input_height": HEIGHT, **extra})
    assert info.value.key == key
    assert not (tmp_path / "export" / "model.onnx").exists()


def test_camera_count_above_max_num_cams_names_the_key(tmp_path, converted):
    from sparse4d.engine.checkpoint import load_checkpoint_file
    from sparse4d.engine.deploy_model import load_sparse4d_checkpoint
    from sparse4d.engine.onnx_graph import check_export_fits

    checkpoint, spec, _ = build_checkpoint(tmp_path, converted, cameras=4, max_num_cams=4)
    loaded = load_sparse4d_checkpoint(str(checkpoint), key="export.checkpoint", fallback_model_cfg=spec.model, fallback_classes=[])
    cfg = loaded.model_cfg.model_copy(deep=True)
    cfg.head.deformable_model.num_cams = 6  # a config asking for more cameras than the weight layer holds
    with pytest.raises(SpecError) as info:
        check_export_fits(loaded.model, cfg, width=WIDTH, height=HEIGHT, batch=1)
    assert info.value.key == "model.head.deformable_model.max_num_cams"
    assert load_checkpoint_file(checkpoint)["format"]


def test_batch_above_one_is_refused_at_export(tmp_path, converted):
    from sparse4d.engine.deploy_model import load_sparse4d_checkpoint
    from sparse4d.engine.onnx_graph import check_export_fits

    checkpoint, spec, _ = build_checkpoint(tmp_path, converted)
    loaded = load_sparse4d_checkpoint(str(checkpoint), key="export.checkpoint", fallback_model_cfg=spec.model, fallback_classes=[])
    with pytest.raises(SpecError) as info:
        check_export_fits(loaded.model, loaded.model_cfg, width=WIDTH, height=HEIGHT, batch=4)
    assert info.value.key == "export.batch_size"
