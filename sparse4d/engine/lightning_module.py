"""LightningModule around `Sparse4D`: streamed training steps, optimizer/schedule and gradient clipping.

The model keeps its instance bank between calls, so slot b of consecutive batches continues one
sequence; the bank is reset at each epoch start and wherever `first_frame` is set (by the model).
Validation does not go through Lightning's loop: `TrainingLifecycle` runs it at epoch end on the
absolute epoch numbers (resumed runs included), see sparse4d/engine/callbacks.py.
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from sparse4d.engine.graphed_step import GraphedOptimizerStep
from sparse4d.engine.loss_log import DeferredLossLog, StepLosses
from sparse4d.engine.optim import build_optimizer, build_scheduler

NORM_TYPES = {"L2": 2.0, "L1": 1.0, "inf": float("inf")}


LOSS_GROUPS = ("cls", "box", "cns", "yns", "depth")


class Sparse4DLightning(pl.LightningModule):
    """Training steps never wait on the GPU: each step's losses stay device tensors
    (`DeferredLossLog`) and are read back together every `finite_check_interval` steps, at epoch end
    and before any checkpoint is written. Then every step is written to the loggers under its own step
    number, and a non-finite loss stops the run, naming its batch (a NaN run stops before it can save
    NaN weights)."""

    def __init__(self, model: torch.nn.Module, optim: Any, total_steps: int, finite_check_interval: int = 20,
                 cuda_graph_steps: bool = False, graphed_optimizer: bool = False) -> None:
        super().__init__()
        # regions compiled with mode="reduce-overhead" replay CUDA graphs: each step must tell the
        # graph trees that the last step's outputs are no longer needed
        self.cuda_graph_steps = cuda_graph_steps
        # clip + Adam(W) + zero_grad as one CUDA-graph replay (sparse4d/engine/graphed_step.py); opt-in:
        # it did not shorten the step on an H100 (benchmarks/README.md, session 13)
        self.graphed_optimizer = graphed_optimizer
        self._graphed_step: GraphedOptimizerStep | None = None
        self.model = model
        self.optim = optim
        self.total_steps = int(total_steps)
        self.finite_check_interval = max(int(finite_check_interval), 1)
        self._recent_losses: dict[str, torch.Tensor] = {}
        self._loss_log = DeferredLossLog()
        self._steps_done = 0  # training steps of this process: the loggers' step numbers

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.cuda_graph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.model(batch)
        losses = self.model.loss(out, batch)
        total = losses["loss"]
        summary = {"loss": total.detach()}
        for group in LOSS_GROUPS:
            parts = [v.detach() for k, v in losses.items() if k.startswith(f"loss_{group}")]
            if parts:
                summary[f"loss_{group}"] = torch.stack(parts).sum()
        self._recent_losses = summary
        self._loss_log.add(self._steps_done, batch_idx, summary)
        self._steps_done += 1
        if (batch_idx + 1) % self.finite_check_interval == 0:
            latest = self.check_finite()
            if latest is not None and self._trainer is not None:
                # the progress bar's loss as of this read-back, as a host tensor: a float would become a GPU
                # tensor whose value the bar reads at every refresh (a sync per step)
                self.log("train_loss", torch.tensor(latest), prog_bar=True, logger=False, batch_size=int(batch["img"].shape[0]))
        return total

    def check_finite(self) -> float | None:
        """Write the pending steps' losses to the loggers (one host sync for all of them) and raise,
        naming the first diverged batch, if any step's loss was not finite; returns the latest loss
        (None when nothing was pending)."""
        rows = self.log_pending_losses()
        bad = next((row for row in rows if not math.isfinite(row.values["loss"])), None)
        if bad is not None:
            from sparse4d.errors import Sparse4DError

            raise Sparse4DError(f"training diverged: the loss became NaN or infinite at batch {bad.batch_idx} of the epoch "
                                f"(step {bad.step} of this run)",
                                hint="lower train.optim.lr, keep train.optim.grad_clip.max_norm > 0, or use precision fp32")
        return rows[-1].values["loss"] if rows else None

    def log_pending_losses(self) -> list[StepLosses]:
        """Read the pending steps' losses back (one host sync) and write them to the loggers."""
        rows = self._loss_log.flush()
        for logger in self.loggers:
            for row in rows:
                logger.log_metrics({("train_loss" if name == "loss" else f"train_{name}"): value for name, value in row.values.items()},
                                   step=row.step)
        return rows

    @property
    def last_losses(self) -> dict[str, float]:
        """The latest step's losses as floats (a host sync: read it at epoch end, not per step)."""
        return {k: float(v) for k, v in self._recent_losses.items()}

    def configure_optimizers(self) -> dict[str, Any]:
        if self.graphed_optimizer and self._trainer is not None and str(self._trainer.precision).startswith("16"):
            raise ValueError("the graphed optimizer step does not unscale fp16 gradients: train in bf16 or fp32")
        optimizer = build_optimizer(self.model, self.optim, capturable=self.graphed_optimizer)
        scheduler = build_scheduler(optimizer, self.optim.lr_scheduler, self.total_steps)
        if self.graphed_optimizer:  # after the schedule, whose base rates stay plain numbers
            clip = self.optim.grad_clip
            self._graphed_step = GraphedOptimizerStep(optimizer, float(clip.max_norm), NORM_TYPES[str(clip.norm_type)])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, or with the graphed optimizer: the closure (training step, backward), then
        clip + step + release of the gradients as one replay (Lightning's own clipping is not called)."""
        if self._graphed_step is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        if optimizer_closure is not None:
            optimizer_closure()
        self._graphed_step.step()

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """`train.optim.grad_clip`: max_norm (0 = off) with the configured norm (gradients are unscaled here)."""
        clip = self.optim.grad_clip
        if float(clip.max_norm) <= 0:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, float(clip.max_norm), norm_type=NORM_TYPES[str(clip.norm_type)])
