"""SparseBox3DEncoder: embeds an 11-value anchor as position, size, yaw and velocity parts."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_H, ANCHOR_SIN, ANCHOR_VX, ANCHOR_W

from .blocks import linear_relu_ln


class AnchorEncoder(nn.Module):
    """Four small MLPs combined by concatenation ("cat") or sum ("add"), with an optional output MLP.

    Every decoder layer embeds its anchors with this one encoder. In training the head passes all its
    parameters as one tensor (`flat_parameters`, once per step): autograd then sums the layers'
    gradients for that one tensor, one kernel per extra layer, where it would add each of the 64
    parameter tensors separately (about 320 small kernels per step at the default config, issued
    eagerly between the compiled decoder-layer regions).
    """

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

    def flat_parameters(self) -> Tensor:
        """All parameters concatenated, in `named_parameters` order: the `params` of `forward`."""
        return torch.cat([p.reshape(-1) for p in self.parameters()])

    def forward(self, anchor: Tensor, params: Tensor | None = None) -> Tensor:
        """Embed (..., 11) anchors; `params` (from `flat_parameters`) replaces the module's own."""
        named = None if params is None else self._unflatten(params)

        def mlp(name: str, x: Tensor) -> Tensor:
            return run_mlp(getattr(self, name), name, x, named)

        parts = [mlp("pos_fc", anchor[..., :3])]
        if not self.pos_embed_only:
            parts.append(mlp("size_fc", anchor[..., ANCHOR_W : ANCHOR_H + 1]))
            parts.append(mlp("yaw_fc", anchor[..., ANCHOR_SIN : ANCHOR_COS + 1]))
            if self.vel_fc is not None:
                parts.append(mlp("vel_fc", anchor[..., ANCHOR_VX : ANCHOR_VX + self.vel_dims]))
        if self.mode == "cat":
            out = torch.cat(parts, dim=-1)
        else:
            out = torch.stack(parts).sum(0)
        return out if self.output_fc is None else mlp("output_fc", out)

    def _unflatten(self, params: Tensor) -> dict[str, Tensor]:
        shapes = [(name, p.shape) for name, p in self.named_parameters()]
        sizes = [shape.numel() for _, shape in shapes]
        if params.shape != (sum(sizes),):
            raise ValueError(f"params has shape {tuple(params.shape)}, the encoder's parameters are {sum(sizes)} values: use flat_parameters()")
        return {name: chunk.view(shape) for (name, shape), chunk in zip(shapes, params.split(sizes))}


def run_mlp(layers: nn.Sequential, prefix: str, x: Tensor, params: dict[str, Tensor] | None) -> Tensor:
    """`layers(x)`, or the same Linear/ReLU/LayerNorm stack with weights taken from `params` by name."""
    if params is None:
        return layers(x)
    for index, layer in enumerate(layers):
        name = f"{prefix}.{index}"
        if isinstance(layer, nn.Linear):
            x = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
        elif isinstance(layer, nn.LayerNorm):
            x = F.layer_norm(x, layer.normalized_shape, params[f"{name}.weight"], params[f"{name}.bias"], layer.eps)
        elif isinstance(layer, nn.ReLU):
            x = F.relu(x)
        else:
            raise TypeError(f"run_mlp does not know {type(layer).__name__}")
    return x
