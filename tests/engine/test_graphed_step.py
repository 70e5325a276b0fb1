"""GraphedOptimizerStep: clip + AdamW replayed as one CUDA graph must update like the eager code."""
from __future__ import annotations

import copy

import pytest
import torch

from sparse4d.engine.graphed_step import GraphedOptimizerStep


def test_needs_a_capturable_optimizer_with_a_tensor_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="capturable=True and a tensor lr"):
        GraphedOptimizerStep(torch.optim.AdamW(params, lr=1e-3), max_norm=1.0)


@pytest.mark.gpu
def test_replays_match_eager_clip_and_adamw() -> None:
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    sometimes = torch.nn.Linear(4, 4).cuda()  # gets a gradient only in some steps: those steps run eagerly
    graphed, graphed_sometimes = copy.deepcopy(eager), copy.deepcopy(sometimes)
    eager_params = [*eager.parameters(), *sometimes.parameters()]
    graphed_params = [*graphed.parameters(), *graphed_sometimes.parameters()]
    eager_opt = torch.optim.AdamW(eager_params, lr=1e-2, weight_decay=0.1, fused=True)
    graphed_opt = torch.optim.AdamW(graphed_params, lr=torch.tensor(1e-2, device="cuda"), weight_decay=0.1, fused=True, capturable=True)
    step = GraphedOptimizerStep(graphed_opt, max_norm=0.5)
    for i in range(7):
        x = torch.randn(8, 16, device="cuda")
        for model, extra in ((eager, sometimes), (graphed, graphed_sometimes)):
            y = model(x)
            if i == 4:
                y = extra(y)
            (y ** 2).sum().backward()
        torch.nn.utils.clip_grad_norm_([p for p in eager_params if p.grad is not None], 0.5)
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        step.step()
        if i == 3:  # a schedule writes new rates into the tensors the graph reads
            for group in eager_opt.param_groups:
                group["lr"] = 5e-3
            step.set_lr([5e-3])
        assert all(p.grad is None for p in graphed_params)
    assert step.graph is not None
    assert step.eager_steps == 3  # the first, the capture, and step 4 with the extra layer's gradients
    for a, b in zip(eager_params, graphed_params):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
