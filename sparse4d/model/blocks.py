"""Small building blocks shared by the head: Linear-ReLU-LayerNorm stacks and the asymmetric FFN."""
from __future__ import annotations

from torch import Tensor, nn


def linear_relu_ln(embed_dims: int, in_loops: int, out_loops: int, input_dims: int | None = None) -> list[nn.Module]:
    """`out_loops` x ([Linear, ReLU] x `in_loops`, LayerNorm); the first Linear maps from `input_dims`."""
    input_dims = embed_dims if input_dims is None else input_dims
    layers: list[nn.Module] = []
    for _ in range(out_loops):
        for _ in range(in_loops):
            layers += [nn.Linear(input_dims, embed_dims), nn.ReLU(inplace=True)]
            input_dims = embed_dims
        layers.append(nn.LayerNorm(embed_dims))
    return layers


class AsymmetricFFN(nn.Module):
    """Pre-norm FFN whose input width may differ from its output width (the residual gets a Linear).

    With residual_mode "cat" the deformable step hands over [aggregated, input] (2 x embed_dims); this
    FFN brings it back to embed_dims.
    """

    def __init__(self, in_channels: int, embed_dims: int, feedforward_channels: int, num_fcs: int = 2, ffn_drop: float = 0.0, inplace_act: bool = True) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(in_channels)
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_fcs - 1):
            layers += [nn.Linear(width, feedforward_channels), nn.ReLU(inplace=inplace_act), nn.Dropout(ffn_drop)]
            width = feedforward_channels
        layers += [nn.Linear(width, embed_dims), nn.Dropout(ffn_drop)]
        self.layers = nn.Sequential(*layers)
        self.identity_fc = nn.Identity() if in_channels == embed_dims else nn.Linear(in_channels, embed_dims)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre_norm(x)
        return self.identity_fc(x) + self.layers(x)
