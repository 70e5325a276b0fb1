"""LightningModule around `Sparse4D`: streamed training steps, optimizer/schedule and gradient clipping.

The model keeps its instance bank between calls, so slot b of consecutive batches continues one
sequence; the bank is reset at each epoch start and wherever `first_frame` is set (by the model).
Validation does not go through Lightning's loop: `TrainingLifecycle` runs it at epoch end on the
absolute epoch numbers (resumed runs included), see sparse4d/engine/callbacks.py.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from sparse4d.engine.optim import build_optimizer, build_scheduler

NORM_TYPES = {"L2": 2.0, "L1": 1.0, "inf": float("inf")}


class Sparse4DLightning(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: Any, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.total_steps = int(total_steps)
        self.last_losses: dict[str, float] = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        losses = self.model.loss(out, batch)
        total = losses["loss"]
        if not torch.isfinite(total):
            from sparse4d.errors import Sparse4DError

            raise Sparse4DError(f"training diverged: loss is {float(total)} at batch {batch_idx}",
                                hint="lower train.optim.lr, keep train.optim.grad_clip.max_norm > 0, or use precision fp32")
        batch_size = int(batch["img"].shape[0])
        self.log("train_loss", total.detach(), prog_bar=True, batch_size=batch_size)
        summary = {"loss": float(total.detach())}
        for group in ("cls", "box", "cns", "yns", "depth"):
            parts = [v.detach() for k, v in losses.items() if k.startswith(f"loss_{group}")]
            if parts:
                summary[f"loss_{group}"] = float(torch.stack(parts).sum())
        self.last_losses = summary
        self.log_dict({f"train_{k}": v for k, v in summary.items() if k != "loss"}, batch_size=batch_size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim)
        scheduler = build_scheduler(optimizer, self.optim.lr_scheduler, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """`train.optim.grad_clip`: max_norm (0 = off) with the configured norm (gradients are unscaled here)."""
        clip = self.optim.grad_clip
        if float(clip.max_norm) <= 0:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, float(clip.max_norm), norm_type=NORM_TYPES[str(clip.norm_type)])
