"""Image and scene augmentation as explicit matrices.

Every image change (resize, crop, flip, rotation) is folded into one 3x3 pixel affine, applied once with
`cv2.warpAffine` and folded into the projection matrix, so images, depth targets and projections can
never disagree. The 3D augmentation rotates the whole recentered scene about +z; boxes, velocities
and world->camera matrices turn together.

Keys follow `dataset.augmentation` of the train spec: ``resize_lim`` is the resize factor for images
of ``image_size`` [H, W] (other raw sizes are rescaled to match), ``final_dim`` [H, W] the model input,
``bot_pct_lim`` the fraction of the bottom cropped away, ``rot_lim`` degrees, ``rand_flip``,
``rot3d_range`` radians. In test mode nothing is random: the mean resize, centred horizontal crop and
mean bottom crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class AugParams:
    resize: float  # factor relative to `image_size`
    bottom_crop: float  # fraction of the resized height cut from the bottom
    crop_x_fraction: float  # 0..1 position of the horizontal crop window
    flip: bool
    rotate_deg: float
    rotate3d_rad: float


def sample_aug_params(section: Any, rng: np.random.Generator | None) -> AugParams:
    """Random parameters for training (rng given) or the fixed test-mode ones (rng None)."""
    resize_lim = [float(v) for v in section.resize_lim]
    bottom = [float(v) for v in section.bot_pct_lim]
    if rng is None:
        return AugParams(float(np.mean(resize_lim)), float(np.mean(bottom)), 0.5, False, 0.0, 0.0)
    rot_lim = [float(v) for v in section.rot_lim]
    rot3d = [float(v) for v in section.rot3d_range]
    return AugParams(
        resize=float(rng.uniform(*resize_lim)),
        bottom_crop=float(rng.uniform(*bottom)),
        crop_x_fraction=float(rng.uniform(0.0, 1.0)),
        flip=bool(section.rand_flip) and bool(rng.random() < 0.5),
        rotate_deg=float(rng.uniform(*rot_lim)),
        rotate3d_rad=float(rng.uniform(*rot3d)),
    )


def image_affine(params: AugParams, raw_wh: tuple[int, int], reference_width: float,
                 final_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from raw pixel coordinates (centres at integers) to model-input pixel coordinates."""
    raw_w, raw_h = raw_wh
    final_h, final_w = final_hw
    scale = params.resize * reference_width / raw_w
    new_w, new_h = raw_w * scale, raw_h * scale
    crop_y = (1.0 - params.bottom_crop) * new_h - final_h
    crop_x = max(0.0, new_w - final_w) * params.crop_x_fraction
    affine = np.array([[scale, 0.0, 0.5 * scale - 0.5 - crop_x],
                       [0.0, scale, 0.5 * scale - 0.5 - crop_y],
                       [0.0, 0.0, 1.0]])
    if params.flip:
        affine = np.array([[-1.0, 0.0, final_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ affine
    if params.rotate_deg:
        angle = np.deg2rad(params.rotate_deg)
        cx, cy = (final_w - 1) / 2, (final_h - 1) / 2
        cos_a, sin_a = np.cos(angle), np.sin(angle)
        rotation = np.array([[cos_a, -sin_a, cx - cos_a * cx + sin_a * cy],
                             [sin_a, cos_a, cy - sin_a * cx - cos_a * cy],
                             [0.0, 0.0, 1.0]])
        affine = rotation @ affine
    return affine


def warp_image(image: np.ndarray, affine: np.ndarray, final_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear warp to final_hw (H, W), black outside the source (depth: `sparse4d.data.depth_targets`)."""
    final_h, final_w = final_hw
    return cv2.warpAffine(image, affine[:2], (final_w, final_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def affine_to_projection(affine: np.ndarray) -> np.ndarray:
    """4x4 acting on [u*d, v*d, d, 1] so that (u, v) moves by the pixel affine and d stays."""
    lifted = np.eye(4)
    lifted[:2, :3] = affine[:2]
    return lifted


def rotation_about_z(angle: float) -> np.ndarray:
    """4x4 homogeneous rotation of world points about +z."""
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    matrix = np.eye(4)
    matrix[:2, :2] = [[cos_a, -sin_a], [sin_a, cos_a]]
    return matrix


def rotate_boxes(boxes: np.ndarray, angle: float) -> np.ndarray:
    """Turn (M, 10) boxes with the scene: centre and velocity rotate, yaw adds the angle."""
    if not angle or len(boxes) == 0:
        return boxes
    rotation = rotation_about_z(angle)[:3, :3]
    out = boxes.copy()
    out[:, 0:3] = boxes[:, 0:3] @ rotation.T
    out[:, 7:10] = boxes[:, 7:10] @ rotation.T
    out[:, 6] = np.arctan2(np.sin(boxes[:, 6] + angle), np.cos(boxes[:, 6] + angle))
    return out
