"""Several Linear-ReLU-LayerNorm stacks of the same depth, run side by side as one stack.

The anchor encoder embeds position, size, yaw and velocity with four such stacks (four loops each at
the default config). Run one by one that is 16 small GEMMs and 16 LayerNorms per call, and about
three times as many tiny kernels in the backward, in every decoder layer. Side by side the stacks are
one stack on the concatenated width: every Linear is block-diagonal (the zero blocks keep the
branches apart) and every LayerNorm normalises each branch's segment of the width on its own. That
is 4 GEMMs and 4 normalisations per call, with the same values.

`BranchLayout` maps the branches' parameters, concatenated in `parameters()` order, to the stacked
tensors, through one gather (`to_stacked`) whose backward is one gather too: each parameter value
has exactly one place in the stacked tensors, the zero blocks have none.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def segment_layer_norm(x: Tensor, segment: Tensor, segments: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over each segment of the last dimension, then one elementwise affine over the whole
    width; `segment` (width,) long gives each element's segment, 0 .. segments - 1 (`segment_index`).
    Equal to `F.layer_norm` per segment, computed in float32 and returned in float32 under autocast
    (whose layer_norm does the same: float32 weights), else in the input's dtype.

    Written for a compiler: every reduction spans the full width (one fused kernel whatever the
    segment widths), and the per-segment statistics reach the elements by a product with the 0/1
    membership summed over the segments, not by indexing with `segment`, whose backward is a
    scatter-add (atomics, 64 per value at the default widths: 2 ms per H100 step in session 14).
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    member = (segment.unsqueeze(1) == torch.arange(segments, device=x.device)).to(xf.dtype)  # (width, segments)
    counts = member.sum(0)

    def per_element(stat: Tensor) -> Tensor:  # (..., segments) -> (..., width)
        return (stat.unsqueeze(-2) * member).sum(-1)

    mean = (xf.unsqueeze(-1) * member).sum(-2) / counts
    centred = xf - per_element(mean)
    var = (centred.square().unsqueeze(-1) * member).sum(-2) / counts
    out = centred * per_element(torch.rsqrt(var + eps)) * weight + bias
    return out.to(torch.promote_types(x.dtype, weight.dtype))


def segment_index(sizes: list[int]) -> Tensor:
    """(sum(sizes),) long: the segment of each element when segments of these widths are concatenated."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


class _GatherWithInverse(torch.autograd.Function):
    """out = [values, 0][index]; its gradient is grad_out[inverse], a gather too (no scatter-add),
    because every value appears exactly once in `out`."""

    @staticmethod
    def forward(ctx, values: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return torch.cat([values, values.new_zeros(1)])[index]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad_out[inverse], None, None


class BranchLayout(nn.Module):
    """How the parameters of same-depth Linear/ReLU/LayerNorm branches sit in one stack run side by side.

    `to_stacked(flat)` takes the branches' parameters concatenated in `parameters()` order (as
    `torch.cat([p.reshape(-1) for p in ...])` makes them) and returns one flat tensor holding, layer
    by layer, the block-diagonal weight and concatenated bias of every Linear and the concatenated
    weight and bias of every LayerNorm; `forward(x, stacked)` runs the stack on the branches'
    concatenated inputs and returns their concatenated outputs.
    """

    index: Tensor
    inverse: Tensor
    segment: Tensor

    def __init__(self, branches: list[nn.Sequential]) -> None:
        super().__init__()
        first = branches[0]
        for branch in branches:
            if [type(layer) for layer in branch] != [type(layer) for layer in first]:
                raise ValueError("branches must have the same layers in the same order to be stacked")
        self.kinds: list[type] = [type(layer) for layer in first]
        self.eps = [layer.eps for layer in first if isinstance(layer, nn.LayerNorm)]
        self.widths = [branch_width(branch) for branch in branches]
        self.register_buffer("segment", segment_index(self.widths), persistent=False)
        offsets = _parameter_offsets(branches)
        pieces: list[Tensor] = []
        self.shapes: list[tuple[int, ...]] = []
        for position, kind in enumerate(self.kinds):
            if kind is nn.Linear:
                weights = [offsets[(k, position, "weight")] for k in range(len(branches))]
                rows = sum(w.shape[0] for w in weights)
                cols = sum(w.shape[1] for w in weights)
                block = torch.full((rows, cols), -1, dtype=torch.long)
                r = c = 0
                for w in weights:
                    block[r : r + w.shape[0], c : c + w.shape[1]] = w
                    r, c = r + w.shape[0], c + w.shape[1]
                pieces.append(block.reshape(-1))
                self.shapes.append((rows, cols))
            if kind in (nn.Linear, nn.LayerNorm):
                names = ("bias",) if kind is nn.Linear else ("weight", "bias")
                for name in names:
                    piece = torch.cat([offsets[(k, position, name)].reshape(-1) for k in range(len(branches))])
                    pieces.append(piece)
                    self.shapes.append((piece.numel(),))
        index = torch.cat(pieces)
        total = sum(p.numel() for branch in branches for p in branch.parameters())
        index[index < 0] = total  # the zero appended by `to_stacked`
        inverse = torch.empty(total, dtype=torch.long)
        placed = index < total
        inverse[index[placed]] = torch.nonzero(placed).squeeze(1)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("inverse", inverse, persistent=False)

    def to_stacked(self, flat: Tensor) -> Tensor:
        return _GatherWithInverse.apply(flat, self.index, self.inverse)

    def forward(self, x: Tensor, stacked: Tensor) -> Tensor:
        tensors = iter(t.view(shape) for t, shape in zip(stacked.split([math.prod(s) for s in self.shapes]), self.shapes))
        eps = iter(self.eps)
        for kind in self.kinds:
            if kind is nn.Linear:
                weight = next(tensors)
                x = F.linear(x, weight, next(tensors))
            elif kind is nn.LayerNorm:
                weight = next(tensors)
                x = segment_layer_norm(x, self.segment, len(self.widths), weight, next(tensors), next(eps))
            elif kind is nn.ReLU:
                x = F.relu(x)
            else:
                raise TypeError(f"BranchLayout cannot stack {kind.__name__}")
        return x


def branch_width(branch: nn.Sequential) -> int:
    """Output width of a Linear/ReLU/LayerNorm stack (its last Linear's)."""
    return [layer for layer in branch if isinstance(layer, nn.Linear)][-1].out_features


def _parameter_offsets(branches: list[nn.Sequential]) -> dict[tuple[int, int, str], Tensor]:
    """(branch, layer position, "weight"/"bias") -> that parameter's element positions in the
    branches' parameters concatenated in order, shaped like the parameter."""
    found: dict[tuple[int, int, str], Tensor] = {}
    start = 0
    for k, branch in enumerate(branches):
        for position, layer in enumerate(branch):
            for name, p in layer.named_parameters(recurse=False):
                found[(k, position, name)] = torch.arange(start, start + p.numel()).view(p.shape)
                start += p.numel()
    return found

