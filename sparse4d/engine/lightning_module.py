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


LOSS_GROUPS = ("cls", "box", "cns", "yns", "depth")


class Sparse4DLightning(pl.LightningModule):
    """Training steps never wait on the GPU: losses stay device tensors, and divergence (a non-finite
    loss) is accumulated on the device and checked every `finite_check_interval` steps, at epoch end
    and before any checkpoint is written (a NaN run stops before it can save NaN weights)."""

    def __init__(self, model: torch.nn.Module, optim: Any, total_steps: int, finite_check_interval: int = 20,
                 cuda_graph_steps: bool = False) -> None:
        super().__init__()
        # regions compiled with mode="reduce-overhead" replay CUDA graphs: each step must tell the
        # graph trees that the last step's outputs are no longer needed
        self.cuda_graph_steps = cuda_graph_steps
        self.model = model
        self.optim = optim
        self.total_steps = int(total_steps)
        self.finite_check_interval = max(int(finite_check_interval), 1)
        self._recent_losses: dict[str, torch.Tensor] = {}
        self._nonfinite: torch.Tensor | None = None
        self._nonfinite_since = -1

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.cuda_graph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.model(batch)
        losses = self.model.loss(out, batch)
        total = losses["loss"]
        batch_size = int(batch["img"].shape[0])
        summary = {"loss": total.detach()}
        for group in LOSS_GROUPS:
            parts = [v.detach() for k, v in losses.items() if k.startswith(f"loss_{group}")]
            if parts:
                summary[f"loss_{group}"] = torch.stack(parts).sum()
        self._recent_losses = summary
        bad = ~torch.isfinite(summary["loss"])
        if self._nonfinite is None:
            self._nonfinite, self._nonfinite_since = bad, batch_idx
        else:
            self._nonfinite = self._nonfinite | bad
        self.log("train_loss", summary["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train_{k}": v for k, v in summary.items() if k != "loss"}, batch_size=batch_size)
        if (batch_idx + 1) % self.finite_check_interval == 0:
            self.check_finite(batch_idx)
        return total

    def check_finite(self, batch_idx: int | None = None) -> None:
        """Raise if any loss since the last check was not finite (one host sync)."""
        flag, since = self._nonfinite, self._nonfinite_since
        self._nonfinite = None
        if flag is None or not bool(flag):
            return
        from sparse4d.errors import Sparse4DError

        where = f"between batch {since} and {batch_idx}" if batch_idx is not None and batch_idx != since else f"at batch {since}"
        raise Sparse4DError(f"training diverged: the loss became NaN or infinite {where}",
                            hint="lower train.optim.lr, keep train.optim.grad_clip.max_norm > 0, or use precision fp32")

    @property
    def last_losses(self) -> dict[str, float]:
        """The latest step's losses as floats (a host sync: read it at epoch end, not per step)."""
        return {k: float(v) for k, v in self._recent_losses.items()}

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
