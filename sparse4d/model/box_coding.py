"""Conversions between the 10-value box layout and the 11-value anchor encoding (see sparse4d/batch.py)."""
from __future__ import annotations

import torch
from torch import Tensor

from sparse4d.batch import (
    ANCHOR_COS,
    ANCHOR_H,
    ANCHOR_L,
    ANCHOR_SIN,
    ANCHOR_VX,
    ANCHOR_W,
    BOX_H,
    BOX_L,
    BOX_VX,
    BOX_W,
    BOX_YAW,
)


def encode_boxes(boxes: Tensor) -> Tensor:
    """(..., 10) [x,y,z,w,l,h,yaw,vx,vy,vz] -> (..., 11) [x,y,z,log w,log l,log h,sin,cos,vx,vy,vz]."""
    sizes = boxes[..., BOX_W : BOX_H + 1].clamp(min=1e-3).log()
    yaw = boxes[..., BOX_YAW : BOX_YAW + 1]
    return torch.cat([boxes[..., :3], sizes, yaw.sin(), yaw.cos(), boxes[..., BOX_VX:]], dim=-1)


def decode_anchors(anchors: Tensor) -> Tensor:
    """(..., 11) anchor encoding -> (..., 10) boxes; yaw = atan2(sin, cos)."""
    sizes = anchors[..., ANCHOR_W : ANCHOR_H + 1].exp()
    yaw = torch.atan2(anchors[..., ANCHOR_SIN], anchors[..., ANCHOR_COS])[..., None]
    return torch.cat([anchors[..., :3], sizes, yaw, anchors[..., ANCHOR_VX:]], dim=-1)


def box_size_xyz(anchors: Tensor) -> Tensor:
    """Extents along the box's own axes (x = heading, y = across, z = up): [l, w, h]."""
    # stacked slices, not a list index: indexing a CUDA tensor with a Python list copies the index to the GPU and waits
    return torch.stack([anchors[..., ANCHOR_L], anchors[..., ANCHOR_W], anchors[..., ANCHOR_H]], dim=-1).exp()


__all__ = ["encode_boxes", "decode_anchors", "box_size_xyz", "BOX_L", "ANCHOR_L"]
