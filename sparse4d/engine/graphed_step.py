"""Gradient clipping and the optimizer step, replayed as one CUDA graph.

Why: the default model has about 800 parameter tensors. Eagerly, the clip (`_foreach_norm`, the
total norm, the scaling), fused AdamW's per-parameter Python setup and `zero_grad` cost the host
about 17 ms per training step on an H200 (benchmarks/README.md, session 11 host timeline) for
about 1.5 ms of GPU work. Measured on an H100 (session 13, `gpu_session.sh ab-graphed`), replaying
it did not shorten the step (117.8 vs 117.0 ms): the host spends that time while the GPU is still in
the backward, and then waited for the GPU anyway at the next step's denoising costs (a wait gone
since session 15: `gpu_session.sh ab-toggle denoising-costs graphed-optimizer` measures both). So the
trainer keeps it opt-in (`Sparse4DLightning(graphed_optimizer=True)`).

A graph reads fixed addresses, and autograd hands over fresh gradient tensors every step. Keeping
the gradients allocated instead makes autograd add into them, one `add_` launch per parameter
(session 11: +10 ms in `backward()`, a net loss). So here the gradients autograd made are copied
into the graph's own buffers with one multi-tensor copy (a few launches, ~0.3 GB of device copies
for the default model), the graph replays clip + AdamW, and the gradients are released as
`zero_grad(set_to_none=True)` would. A step in which the set of parameters with a gradient
differs from the captured one runs eagerly, with the same semantics (a parameter without a
gradient is skipped, as eager AdamW skips it).

The optimizer must be capturable (Adam/AdamW with `capturable=True`, fused on the CPU). Its learning rates live in
tensors this class owns (one per parameter group, on the parameters' device), so a schedule changes
what the graph reads instead of numbers baked into it: `LambdaLR` fills them in place, and a group
whose `lr` was replaced (an older scheduler, loading an optimizer state) is copied back into its
tensor before the next step. On a device without CUDA graphs (the CPU) every step runs eagerly, with
the same semantics, so the trainer's wiring is tested there.
"""
from __future__ import annotations

import torch
from torch import Tensor


class GraphedOptimizerStep:
    """`step()` = clip_grad_norm_(max_norm, norm_type) + optimizer.step() + zero_grad(set_to_none=True).

    On CUDA the first call runs eagerly (the optimizer creates its state), the second captures the
    graph, later ones replay it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0) -> None:
        self.optimizer = optimizer
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.on_cuda = bool(self.params) and all(p.is_cuda for p in self.params)
        if not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ValueError("GraphedOptimizerStep needs an optimizer built with capturable=True (Adam or AdamW; fused on the CPU)")
        device = self.params[0].device if self.params else torch.device("cpu")
        self.lrs = [torch.tensor(float(group["lr"]), dtype=torch.float32, device=device) for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self.lrs):
            group["lr"] = lr
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_grads: list[Tensor] = []
        self._graph_has_grad: list[bool] = []
        self.eager_steps = 0  # steps that could not replay (the first, the capture, a changed gradient set)

    def _sync_lr(self) -> None:
        """Put each group's current rate into the tensor the graph reads (no host sync)."""
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            value = group["lr"]
            if value is not lr:
                if isinstance(value, Tensor):
                    lr.copy_(value)
                else:
                    lr.fill_(float(value))
                group["lr"] = lr

    def _clip_and_step(self, params: list[Tensor]) -> None:
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type, foreach=True)
        self.optimizer.step()

    def _release_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self._sync_lr()
        has_grad = [p.grad is not None for p in self.params]
        if self.graph is not None and has_grad == self._graph_has_grad:
            torch._foreach_copy_(self.graph_grads, [p.grad for p in self.params if p.grad is not None])
            self.graph.replay()
            self._release_grads()
            return
        self.eager_steps += 1
        with_grad = [p for p in self.params if p.grad is not None]
        if not self.on_cuda or self.graph is not None or self.eager_steps == 1 or not with_grad:
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
        # thread_local: the trainer's pin-memory thread may allocate pinned memory during the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._clip_and_step(with_grad)
        self.graph = graph
        graph.replay()  # capturing ran nothing
        self._release_grads()
