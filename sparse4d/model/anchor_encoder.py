"""SparseBox3DEncoder: embeds an 11-value anchor as position, size, yaw and velocity parts."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_COS, ANCHOR_H, ANCHOR_SIN, ANCHOR_VX, ANCHOR_W

from .blocks import linear_relu_ln
from .grouped_branches import BranchLayout


class AnchorEncoder(nn.Module):
    """Four small MLPs combined by concatenation ("cat") or sum ("add"), with an optional output MLP.

    Every decoder layer embeds its anchors with this one encoder. In training the head passes all its
    parameters as one tensor (`flat_parameters`, once per step): autograd then sums the layers'
    gradients for that one tensor, one kernel per extra layer, where it would add each of the 64
    parameter tensors separately (about 320 small kernels per step at the default config, issued
    eagerly between the compiled decoder-layer regions). With `stack_branches` (set by
    `engine.compile.compile_regions`) that tensor holds the four MLPs stacked side by side
    (`grouped_branches`): block-diagonal Linears and per-segment LayerNorms, so each loop is one GEMM
    and one fused normalisation instead of four of each. That pays only compiled: run eagerly, the
    per-segment LayerNorm is a dozen ops and the block-diagonal GEMMs do 3x the work (5x slower on a
    CPU), so eagerly the four MLPs run one after another from the tensor concatenated in parameter
    order. Inference (export, quantized weights) runs the modules themselves; the state dict is the
    modules' either way.
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
        self.stacked = BranchLayout([branch for _, branch in self._branches()])
        self.stack_branches = False
        self.input_columns = self._input_columns()

    def _branches(self) -> list[tuple[str, nn.Sequential]]:
        names = ("pos_fc", "size_fc", "yaw_fc", "vel_fc")
        return [(name, getattr(self, name)) for name in names if getattr(self, name) is not None]

    def _branch_inputs(self) -> list[tuple[str, slice]]:
        """(branch name, the anchor values it embeds) of every branch, in order."""
        columns = {
            "pos_fc": slice(0, 3),
            "size_fc": slice(ANCHOR_W, ANCHOR_H + 1),
            "yaw_fc": slice(ANCHOR_SIN, ANCHOR_COS + 1),
            "vel_fc": slice(ANCHOR_VX, ANCHOR_VX + self.vel_dims),
        }
        return [(name, columns[name]) for name, _ in self._branches()]

    def _input_columns(self) -> list[int]:
        """The anchor values the branches embed, branch after branch (the input of the stacked branches)."""
        return [column for _, columns in self._branch_inputs() for column in range(columns.start, columns.stop)]

    def flat_parameters(self) -> Tensor:
        """All parameters as one tensor, the branches stacked (`BranchLayout`) and then the output
        MLP's in order: the `params` of `forward`. With `stack_branches` off: every parameter in order."""
        if not self.stack_branches:
            return torch.cat([p.reshape(-1) for p in self.parameters()])
        stacked = self.stacked.to_stacked(torch.cat([p.reshape(-1) for _, branch in self._branches() for p in branch.parameters()]))
        if self.output_fc is None:
            return stacked
        return torch.cat([stacked, *(p.reshape(-1) for p in self.output_fc.parameters())])

    def forward(self, anchor: Tensor, params: Tensor | None = None) -> Tensor:
        """Embed (..., 11) anchors; `params` (from `flat_parameters`) replaces the module's own."""
        if params is not None and self.stack_branches:
            return self._stacked_forward(anchor, params)
        named = None if params is None else self._unflatten(params)

        def mlp(name: str, x: Tensor) -> Tensor:
            return run_mlp(getattr(self, name), name, x, named)

        parts = [mlp(name, anchor[..., columns]) for name, columns in self._branch_inputs()]
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

    def _stacked_forward(self, anchor: Tensor, params: Tensor) -> Tensor:
        stacked_size = self.stacked.index.numel()
        tail = [p.shape for p in self.output_fc.parameters()] if self.output_fc is not None else []
        expected = stacked_size + sum(shape.numel() for shape in tail)
        if params.shape != (expected,):
            raise ValueError(f"params has shape {tuple(params.shape)}, the encoder's parameters are {expected} values: use flat_parameters()")
        columns = self.input_columns
        contiguous = columns == list(range(len(columns)))
        x = anchor[..., : len(columns)] if contiguous else anchor[..., columns]
        out = self.stacked(x, params[:stacked_size])
        if self.mode == "add":
            out = out.unflatten(-1, (len(self.stacked.widths), -1)).sum(-2)
        if self.output_fc is None:
            return out
        sizes = [shape.numel() for shape in tail]
        named = {f"output_fc.{name}": chunk.view(p.shape) for (name, p), chunk in zip(self.output_fc.named_parameters(), params[stacked_size:].split(sizes))}
        return run_mlp(self.output_fc, "output_fc", out, named)


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
