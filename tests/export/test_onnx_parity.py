"""ONNX Runtime runs the exported frame graph like PyTorch runs the model: boxes, scores, track ids."""
from __future__ import annotations

import numpy as np
import torch

from sparse4d.engine.export import run_export
from sparse4d.engine.onnx_runner import OnnxFrameRunner

from .conftest import HEIGHT, WIDTH, build_checkpoint, data_overrides, make_spec, tiny_model_overrides


def export_spec(tmp_path, converted, checkpoint, **extra):
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "export"))
    overrides.update({"export.checkpoint": str(checkpoint), "export.onnx_file": "model.onnx", "export.on_cpu": True,
                      "export.input_width": WIDTH, "export.input_height": HEIGHT})
    overrides.update(extra)
    return make_spec("export", overrides)


def frames(num_cams: int, count: int = 3, seed: int = 0):
    """A short sequence of random images seen by level cameras around the scene centre."""
    import math

    g = torch.Generator().manual_seed(seed)
    proj = []
    for c in range(num_cams):
        yaw = 2 * math.pi * c / num_cams
        fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        rot = torch.stack([torch.linalg.cross(down, fwd), down, fwd])
        w2c = torch.eye(4)
        w2c[:3, :3] = rot
        w2c[:3, 3] = -rot @ (-8 * fwd + torch.tensor([0.0, 0.0, 1.5]))
        k = torch.eye(4)
        k[0, 0] = k[1, 1] = 60.0
        k[0, 2], k[1, 2] = WIDTH / 2, HEIGHT / 2
        proj.append(k @ w2c)
    projection = torch.stack(proj)[None]
    wh = torch.tensor([float(WIDTH), float(HEIGHT)]).expand(1, num_cams, 2).clone()
    for f in range(count):
        yield {"img": torch.randn(1, num_cams, 3, HEIGHT, WIDTH, generator=g), "projection_mat": projection, "image_wh": wh,
               "timestamp": torch.tensor([0.5 * f], dtype=torch.float64), "first_frame": torch.tensor([f == 0])}


def test_onnx_runtime_matches_pytorch_over_three_frames(tmp_path, converted):
    checkpoint, _, model = build_checkpoint(tmp_path, converted)
    path = run_export(export_spec(tmp_path, converted, checkpoint))
    runner = OnnxFrameRunner(path)
    model.reset_temporal_state()
    threshold = None
    tracked = 0
    for number, batch in enumerate(frames(2)):
        if threshold is None:  # a tracking threshold that starts some tracks but not all
            with torch.no_grad():
                probe = model(batch)["decoded"]["scores_3d"][0]
            model.reset_temporal_state()
            threshold = float(probe.sort(descending=True).values[5:7].mean())
            model.score_threshold = threshold
        with torch.no_grad():
            expected = model(batch)["decoded"]
        got = runner.run_frame(batch["img"].numpy(), batch["projection_mat"].numpy(), batch["image_wh"].numpy(),
                               timestamp=float(batch["timestamp"][0]), first_frame=bool(batch["first_frame"][0]),
                               tracking_threshold=threshold)
        order_t = np.argsort(-expected["scores_3d"][0].numpy(), kind="stable")
        order_o = np.argsort(-got["scores_3d"][0], kind="stable")
        np.testing.assert_allclose(got["scores_3d"][0][order_o], expected["scores_3d"][0].numpy()[order_t], atol=1e-3, rtol=0)
        np.testing.assert_allclose(got["boxes_3d"][0][order_o], expected["boxes_3d"][0].numpy()[order_t], atol=1e-3, rtol=0)
        np.testing.assert_array_equal(got["track_ids"][0][order_o], expected["track_ids"][0].numpy()[order_t])
        np.testing.assert_array_equal(got["labels_3d"][0][order_o], expected["labels_3d"][0].numpy()[order_t])
        tracked += int((got["track_ids"][0] >= 0).sum())
        if number > 0:  # carried instances keep ids started on earlier frames
            assert set(got["track_ids"][0][got["track_ids"][0] >= 0].tolist()) & seen, "no track id survived to the next frame"
        seen = set(got["track_ids"][0][got["track_ids"][0] >= 0].tolist())
    assert tracked > 0
