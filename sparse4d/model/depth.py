"""Dense depth branch: an auxiliary per-pixel depth head on the first FPN levels (Sparse4D v2/v3).

It only shapes the image features during training; inference does not run it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DenseDepthNet(nn.Module):
    """Predicts depth = exp(conv1x1(feature)) rescaled by each camera's focal length."""

    def __init__(self, embed_dims: int, num_depth_layers: int, loss_weight: float, equal_focal: float = 100.0, max_depth: float = 60.0) -> None:
        super().__init__()
        self.num_depth_layers = num_depth_layers
        self.loss_weight = loss_weight
        self.equal_focal = equal_focal
        self.max_depth = max_depth
        self.depth_layers = nn.ModuleList(nn.Conv2d(embed_dims, 1, 1) for _ in range(num_depth_layers))

    def forward(self, feature_maps: list[Tensor], focal: Tensor) -> list[Tensor]:
        """feature_maps: per level (B, N, C, h, w); focal: (B, N) pixels. Returns per level (B, N, h, w)."""
        depths = []
        scale = (focal / self.equal_focal)[..., None, None]
        for layer, feat in zip(self.depth_layers, feature_maps[: self.num_depth_layers]):
            b, n = feat.shape[:2]
            x = feat.flatten(0, 1)
            if not torch.is_autocast_enabled(x.device.type):  # under autocast the conv casts its input itself:
                x = x.to(layer.weight.dtype)  # an fp32 copy there was cast straight back (0.7 GB at the default config)
            depth = layer(x).float().exp().reshape(b, n, *feat.shape[-2:])
            depths.append(depth * scale)
        return depths

    def loss(self, depths: list[Tensor], gt_depth: Tensor) -> Tensor:
        """Mean L1 over pixels with known depth (gt > 0), x loss_weight; 0 when nothing is known."""
        total = gt_depth.new_zeros(())
        for pred in depths:
            target = downsample_depth(gt_depth, pred.shape[-2:])
            valid = (target > 0) & torch.isfinite(pred)
            err = (pred.clamp(0.0, self.max_depth) - target).abs()
            total = total + torch.where(valid, err, torch.zeros_like(err)).sum() / valid.sum().clamp(min=1)
        return total * self.loss_weight / max(len(depths), 1)


def downsample_depth(gt_depth: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Nearest valid depth per output cell: the minimum positive value in the cell, 0 where none.

    Averaging would mix unknown (0) pixels into the target; the minimum keeps the closest surface.
    """
    b, n, h, w = gt_depth.shape
    oh, ow = int(size[0]), int(size[1])
    d = gt_depth.reshape(b * n, 1, h, w)
    inf = torch.full_like(d, float("inf"))
    d = torch.where(d > 0, d, inf)
    if h % oh == 0 and w % ow == 0:
        pooled = -F.max_pool2d(-d, kernel_size=(h // oh, w // ow))
    else:
        pooled = -F.adaptive_max_pool2d(-d, (oh, ow))
    pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
    return pooled.reshape(b, n, oh, ow)
