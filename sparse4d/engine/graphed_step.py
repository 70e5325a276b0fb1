"""Gradient clipping, the optimizer step and the zeroing of gradients, replayed as one CUDA graph.

Why: the default model has several hundred parameter tensors. Eagerly, the clip (`_foreach_norm`,
the total norm, the scaling) and fused AdamW's per-parameter Python setup cost the host 11-15 ms per
training step on an H200 (benchmarks/README.md, session 10 host timeline), for about 1.5 ms of GPU
work; the step is host-bound, so that time is lost. Replayed from a CUDA graph it is one launch.

What a graph needs, and what that changes:
  * static gradient tensors: every trainable parameter gets a gradient buffer once, and the graph
    zeroes them in place after the step (autograd then adds into them). A parameter that gets no
    gradient in a step is updated with a zero gradient (its moments decay, weight decay applies), as
    with `zero_grad(set_to_none=False)`, PyTorch's behaviour before 2.0 and the original Sparse4D's;
  * a capturable optimizer (Adam/AdamW with `capturable=True`) whose learning rates are tensors, so a
    schedule changes them in place (`set_lr`) instead of baking numbers into the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor


class GraphedOptimizerStep:
    """`step()` = clip_grad_norm_(max_norm) + optimizer.step() + zero the gradients, as one replay.

    The first call runs eagerly (the optimizer creates its state), the second captures the graph,
    later ones replay it. Gradients must not be set to None in between (use this object's `step`
    instead of `optimizer.zero_grad()`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        for group in optimizer.param_groups:
            if not group.get("capturable", False) or not isinstance(group["lr"], Tensor):
                raise ValueError("GraphedOptimizerStep needs an optimizer built with capturable=True and a tensor lr")
        self.optimizer = optimizer
        self.max_norm = float(max_norm)
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self._calls = 0

    def _grads_in_place(self) -> list[Tensor]:
        """Every parameter's gradient tensor, created (zeros) where autograd made none."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    def _clip_and_step(self) -> None:
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        self.optimizer.step()

    def step(self) -> None:
        self._calls += 1
        if self.graph is not None:
            self.graph.replay()
            return
        self._grads_in_place()
        if self._calls == 1:  # eager: the optimizer creates its state (moments, step counts)
            self._clip_and_step()
            # Our own zeroed buffers from now on: autograd may have handed over tensors that a compiled
            # region's CUDA graph owns and overwrites at its next replay; into these it adds in place.
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._clip_and_step()
            torch._foreach_zero_([p.grad for p in self.params])
        self.graph = graph
        graph.replay()  # capturing ran nothing

    def set_lr(self, lrs: list[float]) -> None:
        """New learning rates, one per parameter group, written into the tensors the graph reads."""
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"].fill_(float(lr))
