"""SparseBox3DEncoder: embeds an 11-value anchor as position, size, yaw and velocity parts."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_H, ANCHOR_SIN, ANCHOR_VX, ANCHOR_W

from .blocks import linear_relu_ln


class AnchorEncoder(nn.Module):
    """Four small MLPs combined by concatenation ("cat") or sum ("add"), with an optional output MLP."""

    def __init__(
        self,
        embed_dims: list[int],
        vel_dims: int = 3,
        mode: Literal["cat", "add"] = "cat",
        output_fc: bool = False,
        in_loops: int = 1,
        out_loops: int = 4,
        pos_embed_only: bool = False,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.vel_dims = vel_dims
        self.pos_embed_only = pos_embed_only

        def mlp(input_dims: int, dims: int) -> nn.Sequential:
            return nn.Sequential(*linear_relu_ln(dims, in_loops, out_loops, input_dims))

        pos, size, yaw, vel = embed_dims
        self.pos_fc = mlp(3, pos)
        self.size_fc = None if pos_embed_only else mlp(3, size)
        self.yaw_fc = None if pos_embed_only else mlp(2, yaw)
        self.vel_fc = None if pos_embed_only or vel_dims <= 0 else mlp(vel_dims, vel)
        if pos_embed_only:
            out_dims = pos
        elif mode == "cat":
            out_dims = pos + size + yaw + (vel if self.vel_fc is not None else 0)
        else:
            out_dims = pos
        self.output_fc = nn.Sequential(*linear_relu_ln(out_dims, in_loops, out_loops)) if output_fc else None

    def forward(self, anchor: Tensor) -> Tensor:
        parts = [self.pos_fc(anchor[..., :3])]
        if not self.pos_embed_only:
            assert self.size_fc is not None and self.yaw_fc is not None
            parts.append(self.size_fc(anchor[..., ANCHOR_W : ANCHOR_H + 1]))
            parts.append(self.yaw_fc(anchor[..., ANCHOR_SIN : ANCHOR_COS + 1]))
            if self.vel_fc is not None:
                parts.append(self.vel_fc(anchor[..., ANCHOR_VX : ANCHOR_VX + self.vel_dims]))
        if self.mode == "cat":
            out = torch.cat(parts, dim=-1)
        else:
            out = torch.stack(parts).sum(0)
        return out if self.output_fc is None else self.output_fc(out)
