"""Box encoding, key points with a known yaw (the sin/cos order), and camera projection."""
from __future__ import annotations

import math

import torch

from sparse4d.model.box_coding import decode_anchors, encode_boxes
from sparse4d.model.keypoints import KeyPointsGenerator, project_points, yaw_rotation

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
    rot = yaw_rotation(anchor)[0]
    assert torch.allclose(rot[:2, 0], torch.tensor([math.cos(yaw), math.sin(yaw)]), atol=1e-6)


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
