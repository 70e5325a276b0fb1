"""benchmarks/eager_ops.py's attribution of profiled ops: inside a compiled region, or eager glue."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import eager_ops  # noqa: E402


def test_ops_inside_regions_are_not_counted_and_gradient_sums_after_them_are() -> None:
    torch._dynamo.reset()
    weight = torch.randn(8, 8, requires_grad=True)

    def layer(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w).sin() * 3  # four ops that launch kernels, inside the region

    region = torch.compile(layer, backend="aot_eager")
    x = torch.randn(4, 8)
    for _ in range(2):  # compile outside the profiled step
        region(region(x, weight), weight).sum().backward()
    weight.grad = None  # else accumulating into .grad is one more add
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = region(region(x * 2, weight), weight)  # x * 2: one eager forward op
        y.sum().backward()  # eager: the sum, its backward; the two region grads of `weight` summed once
    kernels, contexts, _lines, views, regions = eager_ops.classify(prof.events())
    assert regions == 4  # two region calls, forward and backward each
    assert kernels["aten::mul"] == 1 and kernels["aten::sum"] == 1
    assert kernels["aten::tanh"] == kernels["aten::sin"] == kernels["aten::mm"] == 0  # inside the regions
    assert kernels["aten::add"] + kernels["aten::add_"] == 1  # the gradient sum for the shared weight
    assert contexts["CompiledFunctionBackward"] >= 1  # attributed to the autograd step after a region backward
    torch._dynamo.reset()
