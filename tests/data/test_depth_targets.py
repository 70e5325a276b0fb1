"""Depth targets made in the workers: warped like the image, the nearest known depth per cell, and
the same depth loss as full-resolution targets."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from sparse4d.data.depth_targets import depth_targets, first_level_stride
from sparse4d.model.depth import DenseDepthNet


def _pooled(depth: np.ndarray, stride: int) -> np.ndarray:
    """Brute force: the minimum positive value of each stride x stride cell, 0 where none."""
    h, w = -(-depth.shape[0] // stride), -(-depth.shape[1] // stride)
    out = np.zeros((h, w), np.float32)
    for i in range(h):
        for j in range(w):
            cell = depth[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride]
            known = cell[cell > 0]
            out[i, j] = known.min() if known.size else 0.0
    return out


def _raw_depth(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    mm = (rng.uniform(300, 65535, shape) * (rng.random(shape) > 0.6)).astype(np.uint16)
    mm[:5, :5] = 0  # a cell with nothing known stays 0
    mm[-1, -1] = 65535  # the largest raw value is a depth, not "unknown"
    return mm


def test_targets_are_the_warped_metres_pooled_to_the_closest_known_depth() -> None:
    rng = np.random.default_rng(0)
    affine = np.array([[0.9, 0.05, -3.0], [-0.05, 0.9, 2.0], [0.0, 0.0, 1.0]])
    for raw_shape, final_hw, stride in (((40, 60), (32, 48), 4), ((40, 60), (26, 45), 4), ((20, 20), (18, 18), 2), ((30, 30), (30, 30), 8)):
        raw = _raw_depth(rng, raw_shape)
        metres = raw.astype(np.float32) / 1000.0
        warped = cv2.warpAffine(metres, affine[:2], final_hw[::-1], flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        full = depth_targets(raw, affine, final_hw, 1)
        assert full.dtype == np.float32 and full.shape == final_hw
        np.testing.assert_array_equal(full, warped)
        pooled = depth_targets(raw, affine, final_hw, stride)
        assert pooled.shape == (-(-final_hw[0] // stride), -(-final_hw[1] // stride))
        np.testing.assert_array_equal(pooled, _pooled(warped, stride))
    identity = np.eye(3)
    raw = _raw_depth(rng, (8, 8))
    assert depth_targets(raw, identity, (8, 8), 8)[0, 0] == np.float32(raw[raw > 0].min()) / np.float32(1000.0)
    np.testing.assert_array_equal(depth_targets(np.zeros((8, 8), np.uint16), identity, (8, 8), 4), np.zeros((2, 2)))


def test_pooled_targets_give_the_same_depth_loss() -> None:
    """Levels at strides 4, 8, 16 of a 64x96 input: full-resolution targets and targets pooled to
    stride 4 in the dataset give the same loss (a minimum of minima is the minimum)."""
    rng = np.random.default_rng(1)
    raw = (rng.uniform(500, 65000, (2, 3, 64, 96)) * (rng.random((2, 3, 64, 96)) > 0.97)).astype(np.uint16)
    identity = np.eye(3)
    full = np.stack([np.stack([depth_targets(camera, identity, (64, 96), 1) for camera in sample]) for sample in raw])
    pooled = np.stack([np.stack([depth_targets(camera, identity, (64, 96), 4) for camera in sample]) for sample in raw])
    assert pooled.shape == (2, 3, 16, 24)
    torch.manual_seed(0)
    preds = [torch.rand(2, 3, 64 // s, 96 // s) * 70 for s in (4, 8, 16)]
    net = DenseDepthNet(8, num_depth_layers=3, loss_weight=0.2)
    expected = net.loss(preds, torch.from_numpy(full))
    assert float(expected) > 0
    assert torch.allclose(net.loss(preds, torch.from_numpy(pooled)), expected, rtol=1e-6, atol=0)


def test_first_level_stride_follows_the_neck_start_level() -> None:
    assert [first_level_stride(level) for level in range(4)] == [4, 8, 16, 32]
