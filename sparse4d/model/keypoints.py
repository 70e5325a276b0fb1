"""Key points around each anchor box and their projection into the cameras."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_SIN

from .box_coding import box_size_xyz


def rotate_by_yaw(anchors: Tensor, local: Tensor) -> Tensor:
    """Box-frame offsets (B, Q, P, 3) rotated about +z by each anchor's yaw (its sin, cos slots) into
    world offsets: the box's x axis (heading) becomes (cos yaw, sin yaw, 0) in the world.

    Written out elementwise, not as a batch of 3x3 products: under bf16 autocast a matmul here would
    round to bf16, and on a GPU it ran as a batched matrix-vector product over every key point
    (B*Q*P = 56680 products of 3x3 by 3 at the default config) with a slow backward."""
    sin, cos = anchors[..., ANCHOR_SIN, None], anchors[..., ANCHOR_COS, None]
    x, y, z = local.unbind(-1)
    return torch.stack([cos * x - sin * y, sin * x + cos * y, z], dim=-1)


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
        return rotate_by_yaw(anchors, local) + anchors[:, :, None, :3]


def project_points(points: Tensor, projection_mat: Tensor, image_wh: Tensor, min_depth: float = 1e-2) -> Tensor:
    """World points (B, Q, P, 3) -> normalised image coordinates (B, Q, P, N, 2) for N cameras.

    Points at or behind the camera get (-1, -1): outside every map, so they sample zeros. The 3x4
    products are written out as multiply-adds in the points' dtype (float32): as an einsum, bf16
    autocast rounded u*d, v*d, d to 8 significant bits, pixel errors of up to ~20 px on the synthetic
    cameras (tests/model/test_geometry.py).
    """
    mat = projection_mat.to(points.dtype)[:, None, None]  # (B, 1, 1, N, 4, 4)
    p = points[..., None, None, :]  # (B, Q, P, 1, 1, 3): broadcast over cameras and matrix rows
    cam = (mat[..., :3, :3] * p).sum(-1) + mat[..., :3, 3]  # (B, Q, P, N, 3): [u*d, v*d, d]
    depth = cam[..., 2:3]
    uv = cam[..., :2] / depth.clamp(min=min_depth)
    uv = uv / image_wh[:, None, None].to(points.dtype)
    return torch.where(depth > min_depth, uv, torch.full_like(uv, -1.0))
