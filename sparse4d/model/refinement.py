"""Box refinement: residual update of the anchor, class logits and quality (centerness, yawness)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_DIMS, ANCHOR_H, ANCHOR_SIN, ANCHOR_VX, ANCHOR_W

from .blocks import linear_relu_ln

QUALITY_CNS, QUALITY_YNS = 0, 1
# Refined log sizes stay within 1 cm .. 100 m. Carried denoising negatives (and carried queries whose
# object left) have no box loss, yet are refined again every frame: their sizes random-walk, and the
# key points' exp() of an unbounded log size overflowed (NaN loss) a few dozen frames into training.
LOG_SIZE_MIN, LOG_SIZE_MAX = math.log(0.01), math.log(100.0)


class Scale(nn.Module):
    """Learnable per-channel output scale (starts at 1)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dims))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class BoxRefinement(nn.Module):
    """Predicts anchor deltas (position, size, yaw if `refine_yaw`), velocity as translation / time.

    Velocity is predicted as the translation over the frame interval, then divided by it, so the head
    sees motion in the units it observes between frames.
    """

    def __init__(self, embed_dims: int, num_classes: int, refine_yaw: bool = True, with_quality_estimation: bool = True) -> None:
        super().__init__()
        self.refine_dims = 8 if refine_yaw else 6
        self.layers = nn.Sequential(*linear_relu_ln(embed_dims, 2, 2), nn.Linear(embed_dims, ANCHOR_DIMS), Scale(ANCHOR_DIMS))
        self.cls_layers = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2), nn.Linear(embed_dims, num_classes))
        self.quality_layers = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2), nn.Linear(embed_dims, 2)) if with_quality_estimation else None
        # focal-loss prior: start with ~1% foreground probability
        nn.init.constant_(self.cls_layers[-1].bias, -4.595)
        # Start predicting no motion. The velocity is the predicted translation divided by the frame
        # interval, so at 30 fps a random initial output of 0.5 m reads as 15 m/s; carried instances
        # and carried denoising groups then move metres per frame and drift further every frame.
        with torch.no_grad():
            self.layers[-2].weight[ANCHOR_VX:].zero_()
            self.layers[-2].bias[ANCHOR_VX:].zero_()

    def forward(self, instance_feature: Tensor, anchor: Tensor, anchor_embed: Tensor, time_interval: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """time_interval: (B,) seconds. Returns (refined anchor, class logits, quality logits or None)."""
        feature = instance_feature + anchor_embed
        delta = self.layers(feature)
        refined = delta[..., : self.refine_dims] + anchor[..., : self.refine_dims]
        size = refined[..., ANCHOR_W : ANCHOR_H + 1].clamp(LOG_SIZE_MIN, LOG_SIZE_MAX)
        if self.refine_dims == 8:
            yaw = F.normalize(refined[..., ANCHOR_SIN : ANCHOR_COS + 1], dim=-1)
        else:
            yaw = anchor[..., ANCHOR_SIN : ANCHOR_COS + 1]
        refined = torch.cat([refined[..., :ANCHOR_W], size, yaw], dim=-1)
        velocity = delta[..., ANCHOR_VX:] / time_interval[:, None, None].to(delta.dtype) + anchor[..., ANCHOR_VX:]
        out_anchor = torch.cat([refined, velocity], dim=-1)
        cls = self.cls_layers(instance_feature)
        quality = self.quality_layers(feature) if self.quality_layers is not None else None
        return out_anchor, cls, quality
