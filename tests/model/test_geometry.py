"""Box encoding, key points with a known yaw (the sin/cos order), and camera projection."""
from __future__ import annotations

import math

import torch

from sparse4d.model.box_coding import decode_anchors, encode_boxes
from sparse4d.model.keypoints import KeyPointsGenerator, project_points, rotate_by_yaw

from .model_helpers import camera_projection


def test_encode_decode_roundtrip() -> None:
    boxes = torch.tensor([[1.0, -2.0, 0.5, 0.6, 4.0, 1.7, 2.5, 0.3, -0.1, 0.0], [0, 0, 0, 1, 2, 3, -1.2, 0, 0, 0]])
    enc = encode_boxes(boxes)
    assert torch.allclose(enc[0, 6], torch.tensor(math.sin(2.5))) and torch.allclose(enc[0, 7], torch.tensor(math.cos(2.5)))
    assert torch.allclose(decode_anchors(enc), boxes, atol=1e-5)


def test_keypoints_follow_heading_for_known_yaw() -> None:
    """A box with yaw 90 deg faces +y: the fixed point 0.45 x l ahead lies at +y, 0.45 x w aside at -x."""
    box = torch.tensor([[[10.0, 5.0, 1.0, 2.0, 4.0, 1.5, math.pi / 2, 0, 0, 0]]])  # w=2 (across), l=4 (along heading)
    anchor = encode_boxes(box)
    gen = KeyPointsGenerator(8, [[0, 0, 0], [0.45, 0, 0], [0, 0.45, 0], [0, 0, 0.45]], num_learnable_pts=0)
    pts = gen(anchor, torch.zeros(1, 1, 8))[0, 0]
    assert torch.allclose(pts[0], torch.tensor([10.0, 5.0, 1.0]), atol=1e-5)
    assert torch.allclose(pts[1], torch.tensor([10.0, 5.0 + 1.8, 1.0]), atol=1e-5)  # ahead along +y
    assert torch.allclose(pts[2], torch.tensor([10.0 - 0.9, 5.0, 1.0]), atol=1e-5)  # left of heading = -x
    assert torch.allclose(pts[3], torch.tensor([10.0, 5.0, 1.0 + 0.675]), atol=1e-5)


def test_rotation_uses_sin_then_cos_slots() -> None:
    yaw = 0.3
    anchor = torch.zeros(1, 11)
    anchor[0, 6], anchor[0, 7] = math.sin(yaw), math.cos(yaw)
    heading = rotate_by_yaw(anchor[None], torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]]]]))[0, 0]
    assert torch.allclose(heading[0], torch.tensor([math.cos(yaw), math.sin(yaw), 0.0]), atol=1e-6)
    assert torch.allclose(heading[1], torch.tensor([-math.sin(yaw), math.cos(yaw), 2.0]), atol=1e-6)


def test_projection_hits_expected_pixel_and_hides_points_behind() -> None:
    w, h = 256, 128
    proj = camera_projection((0.0, 0.0, 1.5), 0.0, w, h, focal=100.0)[None, None]  # looks along +x
    wh = torch.tensor([[[float(w), float(h)]]])
    pts = torch.tensor([[[[10.0, 0.0, 1.5], [10.0, -2.0, 0.5], [-5.0, 0.0, 1.5]]]])
    uv = project_points(pts, proj, wh)[0, 0, :, 0]
    assert torch.allclose(uv[0], torch.tensor([0.5, 0.5]), atol=1e-6)
    # 2 m to the right (-y when facing +x), 1 m below the camera: u = 128 + 100*2/10, v = 64 + 100*1/10
    assert torch.allclose(uv[1], torch.tensor([(128 + 20) / w, (64 + 10) / h]), atol=1e-6)
    assert bool((uv[2] < 0).all())


def test_key_points_and_projection_stay_float32_under_bf16_autocast() -> None:
    """Training runs under bf16 autocast: the box rotation and the camera projection must not round to
    bf16 (as matmuls they did: pixel errors of up to ~20 px on these cameras)."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.zeros(2, 300, 11)
    anchors[..., :3] = torch.rand(2, 300, 3, generator=g) * torch.tensor([60.0, 40.0, 2.0]) - torch.tensor([30.0, 20.0, 0.0])
    anchors[..., 3:6] = torch.tensor([0.5, 0.5, 1.7]).log()
    yaw = torch.rand(2, 300, generator=g) * 6.28
    anchors[..., 6], anchors[..., 7] = yaw.sin(), yaw.cos()
    # fixed points only: learnable offsets are a Linear's output, bf16 under autocast like any other
    gen = KeyPointsGenerator(16, [[0, 0, 0], [0.45, 0, 0], [0, 0.45, 0], [0, 0, 0.45]], num_learnable_pts=0)
    feature = torch.randn(2, 300, 16, generator=g)
    w, h = 1408, 512
    proj = torch.stack([camera_projection((-35.0 + 5 * i, -25.0 + 3 * i, 6.0), 0.6 + 0.1 * i, w, h, focal=900.0) for i in range(3)])
    proj = proj[None].expand(2, -1, -1, -1)
    wh = torch.tensor([float(w), float(h)]).expand(2, 3, 2)
    expected = project_points(gen(anchors, feature), proj, wh)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        points = gen(anchors, feature)
        uv = project_points(points, proj, wh)
    assert points.dtype == uv.dtype == torch.float32
    inside = ((expected > 0) & (expected < 1)).all(-1)
    assert int(inside.sum()) > 100  # the cameras see a good share of the points
    pixel_error = ((uv - expected) * wh[:, None, None]).abs()[inside]
    assert float(pixel_error.max()) < 1e-2
