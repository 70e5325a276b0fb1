"""Multi-camera, multi-level deformable feature aggregation: the pure-PyTorch reference.

For every query, key point, camera and level the feature map is sampled bilinearly at the projected
point and summed with softmaxed weights, separately per channel group. This is the operation fused
CUDA kernels implement; `select_aggregation_impl` is the one seam where such a kernel plugs in.

Sampling convention (same as the fused kernels): a normalised location u in [0, 1] maps to the
feature column u * W - 0.5 (pixel centres at half-integers, `align_corners=False`); locations outside
the map read zeros.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor



class PackedLevels(NamedTuple):
    """Feature maps plus the one flat buffer a fused kernel reads them from (packed once per forward)."""

    maps: list[Tensor]
    packed: Tensor
    level_hw: list[int]  # H_0, W_0, H_1, W_1, ...
    # With a gradient sink (`fused_aggregation.attach_gradient_sink`): `packed` is detached, the fused
    # kernel's backward adds the packed gradient into `sink`, and `token` carries it back to the packing.
    token: Tensor | None = None
    sink: Tensor | None = None

    @classmethod
    def pack(cls, maps: list[Tensor]) -> PackedLevels:
        """Maps (B, N, C, H_l, W_l) copied into one flat buffer, level after level, each (B, N, H, W, C)."""
        packed = torch.cat([f.permute(0, 1, 3, 4, 2).reshape(-1) for f in maps])
        return cls(list(maps), packed, [size for f in maps for size in (f.shape[3], f.shape[4])])

    def views(self) -> list[Tensor]:
        """Per level (B, N, C, H, W) views of `packed` (channels-last strides): the maps' values read
        from the packed copy, so gradients through them land in the packed buffer's gradient."""
        b, n, c = self.maps[0].shape[:3]
        views, start = [], 0
        for h, w in zip(self.level_hw[0::2], self.level_hw[1::2]):
            size = b * n * h * w * c
            views.append(self.packed[start : start + size].view(b, n, h, w, c).permute(0, 1, 4, 2, 3))
            start += size
        return views


FeatureLevels = list[Tensor] | PackedLevels
AggregationFn = Callable[[FeatureLevels, Tensor, Tensor], Tensor]
PackFn = Callable[[list[Tensor]], FeatureLevels]


def deformable_aggregation(feature_maps: FeatureLevels, points: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples over cameras x levels x points, per channel group.

    feature_maps: per level (B, N, C, H_l, W_l). points: (B, Q, P, N, 2) normalised (u, v) in [0, 1].
    weights: (B, Q, N, L, P, G) with C divisible by G. Returns (B, Q, C).
    """
    if isinstance(feature_maps, PackedLevels):
        feature_maps = feature_maps.maps
    b, q, p, n, _ = points.shape
    groups = weights.shape[-1]
    grid = (points.permute(0, 3, 1, 2, 4).reshape(b * n, q, p, 2) * 2.0 - 1.0).to(feature_maps[0].dtype)
    out = None
    for level, feat in enumerate(feature_maps):
        c, h, w = feat.shape[2:]
        sampled = F.grid_sample(feat.reshape(b * n, c, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(b, n, groups, c // groups, q, p)
        level_w = weights[:, :, :, level].permute(0, 2, 4, 1, 3)  # (B, N, G, Q, P)
        contrib = (sampled * level_w.unsqueeze(3).to(sampled.dtype)).sum(dim=(1, 5))  # (B, G, C/G, Q)
        out = contrib if out is None else out + contrib
    assert out is not None
    return out.reshape(b, -1, q).transpose(1, 2)


_fused_impl: AggregationFn | None = None
_fused_pack: PackFn | None = None


def set_fused_aggregation_impl(fn: AggregationFn | None, pack: PackFn | None = None) -> None:
    """Plug in (or remove) a fused GPU kernel with the same signature as `deformable_aggregation`, and
    the function that packs a forward's feature maps once for it."""
    global _fused_impl, _fused_pack
    _fused_impl = fn
    _fused_pack = pack if fn is not None else None


def prepare_feature_levels(feature_maps: list[Tensor], prefer_fused: bool = True) -> FeatureLevels:
    """What the decoder layers of one forward share: packed for the fused kernel when it will run,
    else the maps unchanged."""
    if prefer_fused and _fused_pack is not None and feature_maps and feature_maps[0].device.type == "cuda":
        return _fused_pack(feature_maps)
    return feature_maps


def select_aggregation_impl(device: torch.device, prefer_fused: bool = True) -> AggregationFn:
    """The fused kernel on CUDA when one is plugged in and allowed, else the grid_sample reference."""
    if prefer_fused and device.type == "cuda" and _fused_impl is not None:
        return _fused_impl
    return deformable_aggregation
