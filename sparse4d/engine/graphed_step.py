"""Gradient clipping and the optimizer step, replayed as one CUDA graph.

Why: the default model has about 800 parameter tensors. Eagerly, the clip (`_foreach_norm`, the
total norm, the scaling), fused AdamW's per-parameter Python setup and `zero_grad` cost the host
about 17 ms per training step on an H200 (benchmarks/README.md, session 11 host timeline) for
about 1.5 ms of GPU work; the step is host-bound, so that time is lost.

A graph reads fixed addresses, and autograd hands over fresh gradient tensors every step. Keeping
the gradients allocated instead makes autograd add into them, one `add_` launch per parameter
(session 11: +10 ms in `backward()`, a net loss). So here the gradients autograd made are copied
into the graph's own buffers with one multi-tensor copy (a few launches, ~0.3 GB of device copies
for the default model), the graph replays clip + AdamW, and the gradients are released as
`zero_grad(set_to_none=True)` would. A step in which the set of parameters with a gradient
differs from the captured one runs eagerly, with the same semantics (a parameter without a
gradient is skipped, as eager AdamW skips it).

The optimizer must be capturable (Adam/AdamW with `capturable=True`) and its learning rates
tensors, so that a schedule changes them in place (`set_lr`) instead of baking numbers into the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor


class GraphedOptimizerStep:
    """`step()` = clip_grad_norm_(max_norm) + optimizer.step() + zero_grad(set_to_none=True).

    The first call runs eagerly (the optimizer creates its state), the second captures the graph,
    later ones replay it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        for group in optimizer.param_groups:
            if not group.get("capturable", False) or not isinstance(group["lr"], Tensor):
                raise ValueError("GraphedOptimizerStep needs an optimizer built with capturable=True and a tensor lr")
        self.optimizer = optimizer
        self.max_norm = float(max_norm)
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_grads: list[Tensor] = []
        self._graph_has_grad: list[bool] = []
        self.eager_steps = 0  # steps that could not replay (the first, the capture, a changed gradient set)

    def _clip_and_step(self, params: list[Tensor]) -> None:
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)
        self.optimizer.step()

    def _release_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        has_grad = [p.grad is not None for p in self.params]
        if self.graph is not None and has_grad == self._graph_has_grad:
            torch._foreach_copy_(self.graph_grads, [p.grad for p in self.params if p.grad is not None])
            self.graph.replay()
            self._release_grads()
            return
        self.eager_steps += 1
        with_grad = [p for p in self.params if p.grad is not None]
        if self.graph is not None or self.eager_steps == 1 or not with_grad:
            # eager: the first step creates the optimizer's state; later ones keep the graph for the usual set
            self._clip_and_step(with_grad)
            self._release_grads()
            return
        # Capture with the graph's own gradient buffers in place of autograd's (which a compiled region's
        # CUDA graph may own and overwrite at its next replay).
        self.graph_grads = [g.detach().clone() for g in (p.grad for p in with_grad)]
        for p, g in zip(with_grad, self.graph_grads):
            p.grad = g
        self._graph_has_grad = has_grad
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._clip_and_step(with_grad)
        self.graph = graph
        graph.replay()  # capturing ran nothing
        self._release_grads()

    def set_lr(self, lrs: list[float]) -> None:
        """New learning rates, one per parameter group, written into the tensors the graph reads."""
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"].fill_(float(lr))
