"""The training lifecycle around Lightning's loop: seeding, resume, validation, status.json, checkpoints.

Epochs and steps here are absolute (a resumed run continues the numbering of the run it resumes):
``epoch_offset`` epochs and ``step_offset`` optimizer steps were done before this process started.
Only rank 0 writes checkpoints and status events; every rank validates its share of the frames.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from sparse4d.engine.checkpoint import (
    CHECKPOINT_FORMAT, atomic_torch_save, capture_rng_state, checkpoint_name, point_latest, restore_rng_state)
from sparse4d.engine.predictions import Annotations
from sparse4d.engine.runloop import predict_loader
from sparse4d.engine.scoring import kpis, score_results, tables
from sparse4d.jobs.status_file import RUNNING, StatusWriter

LOG = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for (run seed, epoch): every epoch starts from a known RNG state."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


@dataclass
class ResumeState:
    """What a resumed run restores (from the checkpoint it resumes)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    batches_in_epoch: int = 0
    optimizer: dict | None = None
    lr_scheduler: dict | None = None
    rng: dict | None = None


@dataclass
class LifecycleSettings:
    results_dir: Path
    num_epochs: int
    checkpoint_interval: int
    checkpoint_unit: str  # epoch | step
    validation_interval: int
    seed: int  # -1: unseeded
    spec: dict[str, Any]
    classes: list[str]
    resume: ResumeState = field(default_factory=ResumeState)


class TrainingLifecycle(pl.Callback):
    def __init__(self, settings: LifecycleSettings, status: StatusWriter | None,
                 validate: Callable[[pl.LightningModule], dict[str, Any]] | None) -> None:
        self.s = settings
        self.status = status
        self.validate = validate
        self.saved: list[Path] = []
        self.last_kpi: dict[str, float] = {}
        self._restore_rng_at_first_batch = False
        self._saved_at_step = -1
        self._epoch_started = 0.0

    # ---------------------------------------------------------------- numbering
    def epoch_index(self, trainer: pl.Trainer) -> int:
        """0-based absolute index of the running epoch."""
        return self.s.resume.epoch + trainer.current_epoch

    def global_step(self, trainer: pl.Trainer) -> int:
        return self.s.resume.global_step + trainer.global_step

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resume = self.s.resume
        if resume.optimizer is not None:
            trainer.optimizers[0].load_state_dict(resume.optimizer)
        if resume.lr_scheduler is not None and trainer.lr_scheduler_configs:
            trainer.lr_scheduler_configs[0].scheduler.load_state_dict(resume.lr_scheduler)
        self._restore_rng_at_first_batch = resume.rng is not None and (resume.batches_in_epoch > 0 or self.s.seed < 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.model.reset_temporal_state()
        self._epoch_started = time.monotonic()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Seeded here, right before the epoch's first step: creating the loader iterator draws from the
        # torch RNG, and Lightning creates it before or after on_train_epoch_start depending on the epoch.
        if batch_idx == 0 and self.s.seed >= 0:
            seed_all(epoch_seed(self.s.seed, self.epoch_index(trainer)) + trainer.global_rank)
        if self._restore_rng_at_first_batch:
            self._restore_rng_at_first_batch = False
            restore_rng_state(self.s.resume.rng)  # type: ignore[arg-type]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.s.checkpoint_unit != "step":
            return
        step = self.global_step(trainer)
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if step % self.s.checkpoint_interval == 0 and not last_batch:  # the epoch end writes the last one
            done_in_epoch = batch_idx + 1 + (self.s.resume.batches_in_epoch if trainer.current_epoch == 0 else 0)
            self.save(trainer, pl_module, epoch=self.epoch_index(trainer), batches_in_epoch=done_in_epoch)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A failed run still logs the losses of the steps it trained since the last read-back."""
        try:
            pl_module.log_pending_losses()
        except Exception as error:  # e.g. after a CUDA error the values cannot be read back
            LOG.warning("the losses of the last steps before the failure could not be logged: %s", error)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.check_finite()
        completed = self.epoch_index(trainer) + 1
        step = self.global_step(trainer)
        kpi: dict[str, float] = {f"train_{k}" if k != "loss" else "loss": v for k, v in pl_module.last_losses.items()}
        kpi["epoch"] = float(completed)
        kpi["global_step"] = float(step)
        kpi["epoch_time_s"] = time.monotonic() - self._epoch_started
        if self.validate is not None and completed % self.s.validation_interval == 0 or (self.validate is not None and completed == self.s.num_epochs):
            kpi.update(self.validate(pl_module))
        self.last_kpi = kpi
        if trainer.is_global_zero and self.status is not None:
            self.status.write(RUNNING, f"epoch {completed}/{self.s.num_epochs} done (step {step})", kpi=kpi)
        # step unit: the batch hook skips the epoch's last batch, so its interval is honoured here
        due = (self.s.checkpoint_unit == "epoch" and completed % self.s.checkpoint_interval == 0) or \
              (self.s.checkpoint_unit == "step" and step % self.s.checkpoint_interval == 0) or \
              completed == self.s.num_epochs
        if due:
            self.save(trainer, pl_module, epoch=completed, batches_in_epoch=0)

    # ---------------------------------------------------------------- checkpoints
    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, epoch: int, batches_in_epoch: int) -> Path | None:
        step = self.global_step(trainer)
        if not trainer.is_global_zero or step == self._saved_at_step:
            return None
        pl_module.check_finite()  # never write the weights of a diverged run
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()},
            "optimizer": trainer.optimizers[0].state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": int(epoch),
            "global_step": int(step),
            "batches_in_epoch": int(batches_in_epoch),
            "rng": capture_rng_state(),
            "spec": self.s.spec,
            "classes": list(self.s.classes),
            "metrics": dict(self.last_kpi),
        }
        path = self.s.results_dir / checkpoint_name(epoch, step)
        atomic_torch_save(payload, path)
        point_latest(path)
        self._saved_at_step = step
        self.saved.append(path)
        LOG.info("checkpoint %s", path)
        return path


def make_validator(loader_factory: Callable[[], Any], annotations: Annotations, classes: list[str], *,
                   tracking_threshold: float, gather: Callable[[dict], dict] | None = None,
                   print_tables: bool = True) -> Callable[[pl.LightningModule], dict[str, float]]:
    """A function that predicts the val split with the module's model and returns KPIs (rank 0 scores)."""

    def validate(pl_module: pl.LightningModule) -> dict[str, float]:
        trainer = pl_module.trainer
        results = predict_loader(pl_module.model, loader_factory(), classes, device=pl_module.device,
                                 tracking_threshold=tracking_threshold,
                                 autocast=trainer.precision_plugin.forward_context)
        if gather is not None:
            results = gather(results)
        if not trainer.is_global_zero:
            return {}
        scored = score_results(results, annotations, ("detection",))
        if print_tables:
            print(tables(scored), flush=True)
        values = kpis(scored)
        for name, value in values.items():
            pl_module.log(f"val/{name}", value, rank_zero_only=True, sync_dist=False)
        return values

    return validate
