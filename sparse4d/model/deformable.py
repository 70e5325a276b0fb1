"""Deformable aggregation step of the decoder: sample image features at key points of each anchor."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from sparse4d.errors import DataError

from .aggregation import FeatureLevels, select_aggregation_impl
from .blocks import linear_relu_ln
from .keypoints import KeyPointsGenerator, project_points


class DeformableFeatureAggregation(nn.Module):
    """Key points -> projections in every camera -> weighted multi-level sampling -> output projection.

    Attention weights are softmaxed jointly over cameras x levels x points (per channel group). The
    camera count N comes from the batch at run time (N <= max_num_cams): without a camera embedding
    the weight layer predicts weights for `max_num_cams` slots and the first N are used; with one,
    weights are predicted per camera from feature + embedding of that camera's projection matrix.
    """

    def __init__(
        self,
        embed_dims: int,
        num_groups: int,
        num_levels: int,
        max_num_cams: int,
        fix_scale: list[list[float]],
        num_learnable_pts: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_camera_embed: bool = False,
        residual_mode: Literal["cat", "add"] = "cat",
        prefer_fused: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_groups = num_groups
        self.num_levels = num_levels
        self.max_num_cams = max_num_cams
        self.attn_drop = attn_drop
        self.residual_mode = residual_mode
        self.prefer_fused = prefer_fused
        self.kps_generator = KeyPointsGenerator(embed_dims, fix_scale, num_learnable_pts)
        self.num_pts = self.kps_generator.num_pts
        per_cam = num_groups * num_levels * self.num_pts
        if use_camera_embed:
            self.camera_encoder: nn.Sequential | None = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2, 12))
            self.weights_fc = nn.Linear(embed_dims, per_cam)
        else:
            self.camera_encoder = None
            self.weights_fc = nn.Linear(embed_dims, per_cam * max_num_cams)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.zeros_(self.weights_fc.weight)
        nn.init.zeros_(self.weights_fc.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def attention_weights(self, instance_feature: Tensor, anchor_embed: Tensor, projection_mat: Tensor) -> Tensor:
        """(B, Q, N, L, P, G) weights summing to 1 over (N, L, P)."""
        b, q = instance_feature.shape[:2]
        n = projection_mat.shape[1]
        feature = instance_feature + anchor_embed
        if self.camera_encoder is not None:
            cam_embed = self.camera_encoder(projection_mat[:, :, :3].reshape(b, n, 12).to(feature.dtype))
            logits = self.weights_fc(feature[:, :, None] + cam_embed[:, None])
        else:
            logits = self.weights_fc(feature).reshape(b, q, self.max_num_cams, -1)[:, :, :n]
        logits = logits.reshape(b, q, n * self.num_levels * self.num_pts, self.num_groups)
        weights = logits.softmax(dim=-2).reshape(b, q, n, self.num_levels, self.num_pts, self.num_groups)
        if self.training and self.attn_drop > 0:
            keep = torch.rand(b, q, n, 1, self.num_pts, 1, device=weights.device) > self.attn_drop
            weights = weights * keep / (1 - self.attn_drop)
        return weights

    def forward(
        self,
        instance_feature: Tensor,
        anchor: Tensor,
        anchor_embed: Tensor,
        feature_maps: FeatureLevels,
        projection_mat: Tensor,
        image_wh: Tensor,
    ) -> Tensor:
        """feature_maps: per level (B, N, C, H, W), or packed once per forward (`prepare_feature_levels`)."""
        n = projection_mat.shape[1]
        if not torch.jit.is_tracing() and n > self.max_num_cams:  # static shape check, skipped while tracing
            raise DataError(f"the batch has {n} cameras but the model supports at most {self.max_num_cams}", key="model.head.deformable_model.max_num_cams")
        key_points = self.kps_generator(anchor, instance_feature)
        points = project_points(key_points, projection_mat, image_wh)
        weights = self.attention_weights(instance_feature, anchor_embed, projection_mat)
        aggregate = select_aggregation_impl(instance_feature.device, self.prefer_fused)
        features = aggregate(feature_maps, points, weights)
        output = self.proj_drop(self.output_proj(features.to(instance_feature.dtype)))
        if self.residual_mode == "add":
            return output + instance_feature
        return torch.cat([output, instance_feature], dim=-1)
