"""Depth targets made in the dataloader's workers: warped with the image and pooled to the depth
branch's finest resolution.

The depth loss (`sparse4d.model.depth.downsample_depth`) compares each predicted level with the
nearest known depth of its cells: the minimum positive value, 0 where none is known. A minimum of
minima is the minimum, so pooling the map once to the finest level's stride gives the same targets
for every level while each batch carries stride**2 times fewer bytes (at the default 1408x512 input
and stride 4: 35 MB -> 2.2 MB per batch of 2, through the workers' shared memory, the pinned copy
and the host-to-GPU copy that runs in the training step's stream).

The work stays on the raw uint16 millimetres until the pooled map is small: minus one (wrapping),
unknown (0) becomes 65535, the largest value, so a plain minimum (OpenCV's erosion) skips it, and
plus one maps it back. Warping before converting to float is exact too (nearest neighbour copies).
"""
from __future__ import annotations

import cv2
import numpy as np

# stride of each ResNet stage output (C2..C5, `sparse4d.model.backbone.ResNet`) fed to the FPN
BACKBONE_STAGE_STRIDES = (4, 8, 16, 32)
_UNKNOWN_SHIFTED = np.iinfo(np.uint16).max


def first_level_stride(start_level: int) -> int:
    """Stride of the first FPN level (`model.neck.start_level`), where the depth branch's finest prediction is."""
    return BACKBONE_STAGE_STRIDES[min(max(int(start_level), 0), len(BACKBONE_STAGE_STRIDES) - 1)]


def depth_targets(depth_mm: np.ndarray, affine: np.ndarray, final_hw: tuple[int, int], stride: int = 1) -> np.ndarray:
    """Raw uint16 millimetres (0 = unknown) -> float32 metres of the augmented image, (ceil(H/stride),
    ceil(W/stride)) for final_hw (H, W): the image's pixel affine applied with nearest neighbours, then
    per stride x stride cell the closest known depth, 0 where the cell has none.

    A ragged last row/column of cells counts the missing pixels as unknown; the backbone's first
    stage is ceil(H/4) x ceil(W/4) for the same reason (padded stride-2 convolution and pooling).
    """
    height, width = final_hw
    shifted = depth_mm.astype(np.uint16, copy=False) - np.uint16(1)
    warped = cv2.warpAffine(shifted, affine[:2], (width, height), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=_UNKNOWN_SHIFTED)
    if stride > 1:  # erosion anchored at the top-left corner: each pixel becomes the minimum of its cell
        warped = cv2.erode(warped, np.ones((stride, stride), np.uint8), anchor=(0, 0),
                           borderType=cv2.BORDER_CONSTANT, borderValue=_UNKNOWN_SHIFTED)[::stride, ::stride]
    return (warped + np.uint16(1)).astype(np.float32) / 1000.0
