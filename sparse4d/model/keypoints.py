"""Key points around each anchor box and their projection into the cameras."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_SIN

from .box_coding import box_size_xyz


def yaw_rotation(anchors: Tensor) -> Tensor:
    """(..., 3, 3) rotation about +z by the anchor's yaw, built from its (sin, cos) slots.

    Column 0 is the heading direction [cos, sin, 0]: a point (s, 0, 0) in the box frame lands at
    s * (cos yaw, sin yaw) in the world.
    """
    sin, cos = anchors[..., ANCHOR_SIN], anchors[..., ANCHOR_COS]
    zero, one = torch.zeros_like(sin), torch.ones_like(sin)
    rows = [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=-2)


class KeyPointsGenerator(nn.Module):
    """Fixed key points (fractions of the box extents) plus learnable ones predicted from the feature.

    Box frame: x along the heading (extent l), y across it (extent w), z up (extent h).
    """

    def __init__(self, embed_dims: int, fix_scale: list[list[float]], num_learnable_pts: int) -> None:
        super().__init__()
        self.register_buffer("fix_scale", torch.tensor(fix_scale, dtype=torch.float32).reshape(-1, 3), persistent=False)
        self.num_learnable_pts = num_learnable_pts
        self.num_pts = self.fix_scale.shape[0] + num_learnable_pts
        self.learnable_fc = nn.Linear(embed_dims, num_learnable_pts * 3) if num_learnable_pts > 0 else None

    def forward(self, anchors: Tensor, instance_feature: Tensor) -> Tensor:
        """anchors (B, Q, 11), features (B, Q, C) -> world key points (B, Q, P, 3)."""
        b, q = anchors.shape[:2]
        scale = self.fix_scale.to(anchors.dtype)[None, None].expand(b, q, -1, -1)
        if self.learnable_fc is not None:
            learned = self.learnable_fc(instance_feature).reshape(b, q, self.num_learnable_pts, 3).sigmoid() - 0.5
            scale = torch.cat([scale, learned.to(anchors.dtype)], dim=2)
        local = scale * box_size_xyz(anchors)[:, :, None]
        world = (yaw_rotation(anchors)[:, :, None] @ local[..., None]).squeeze(-1)
        return world + anchors[:, :, None, :3]


def project_points(points: Tensor, projection_mat: Tensor, image_wh: Tensor, min_depth: float = 1e-2) -> Tensor:
    """World points (B, Q, P, 3) -> normalised image coordinates (B, Q, P, N, 2) for N cameras.

    Points at or behind the camera get (-1, -1): outside every map, so they sample zeros.
    """
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    cam = torch.einsum("bnij,bqpj->bqpni", projection_mat.to(points.dtype), homo)
    depth = cam[..., 2:3]
    uv = cam[..., :2] / depth.clamp(min=min_depth)
    uv = uv / image_wh[:, None, None].to(points.dtype)
    return torch.where(depth > min_depth, uv, torch.full_like(uv, -1.0))
