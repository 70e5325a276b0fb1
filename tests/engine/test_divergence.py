"""The training step defers its divergence check (no per-step host sync) but still stops a NaN run."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparse4d.engine.data_module import Sparse4DDataModule
from sparse4d.engine.lightning_module import Sparse4DLightning
from sparse4d.errors import DataError, Sparse4DError


class ScriptedModel(nn.Module):
    """A one-parameter 'detector' whose loss turns NaN from batch `nan_from` on."""

    num_classes = 3

    def __init__(self, nan_from: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.nan_from = nan_from
        self.calls = 0

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"x": batch["img"].mean() * self.weight}

    def loss(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        value = out["x"] ** 2
        if self.calls > self.nan_from:
            value = value * float("nan")
        return {"loss_cls_0": value, "loss": value}


def batches(n: int, label: int = 0) -> list[dict[str, Any]]:
    return [{"img": torch.randn(1, 1, 3, 4, 4), "gt_labels_3d": [torch.tensor([label])], "gt_bboxes_3d": [torch.zeros(1, 10)]} for _ in range(n)]


def optim_config() -> Any:
    return SimpleNamespace(type="sgd", lr=0.01, weight_decay=0.0, momentum=0.0,
                           grad_clip=SimpleNamespace(max_norm=0.0, norm_type="L2"),
                           paramwise_cfg=SimpleNamespace(custom_keys=SimpleNamespace(img_backbone=SimpleNamespace(lr_mult=1.0))),
                           lr_scheduler=SimpleNamespace(warmup_iters=0, warmup_ratio=1.0, min_lr_ratio=1.0))


def fit(module: Sparse4DLightning, data: list[dict[str, Any]]) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return trainer


def test_nan_loss_stops_training_at_the_next_check() -> None:
    model = ScriptedModel(nan_from=5)
    module = Sparse4DLightning(model, optim_config(), total_steps=40, finite_check_interval=4)
    with pytest.raises(Sparse4DError, match=r"diverged.*at batch 5 of the epoch \(step 5 of this run\)"):
        fit(module, batches(40))
    assert model.calls == 8  # batches 0..7: the NaN of batch 5 is seen at the check after batch 7


def test_finite_run_keeps_losses_as_device_tensors_until_read() -> None:
    module = Sparse4DLightning(ScriptedModel(nan_from=10**9), optim_config(), total_steps=6, finite_check_interval=4)
    fit(module, batches(6))
    assert all(isinstance(v, torch.Tensor) for v in module._recent_losses.values())
    assert set(module.last_losses) == {"loss", "loss_cls"} and all(isinstance(v, float) for v in module.last_losses.values())


def test_labels_are_checked_on_the_host_before_transfer() -> None:
    data = Sparse4DDataModule(SimpleNamespace(classes=["a", "b", "c"]), None, seed=0)
    good = batches(1, label=2)[0]
    assert data.on_before_batch_transfer(good, 0) is good
    with pytest.raises(DataError, match=r"outside \[0, 3\)"):
        data.on_before_batch_transfer(batches(1, label=3)[0], 0)


def test_the_gt_lists_stay_on_the_host_when_the_batch_moves() -> None:
    """The model solves the denoising assignment from host GT (no wait for the GPU): the data module
    moves everything else (meta stands in for a GPU)."""
    data = Sparse4DDataModule(SimpleNamespace(classes=["a", "b", "c"]), None, seed=0)
    batch = batches(1, label=2)[0]
    moved = data.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.keys() == batch.keys()
    assert moved["img"].device.type == "meta"
    for key in ("gt_bboxes_3d", "gt_labels_3d"):
        assert all(t.device.type == "cpu" for t in moved[key]), key


class RecordingLogger(pl.loggers.Logger):
    """Keeps what the module writes (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((int(step), dict(metrics)))


def test_every_step_is_logged_from_one_read_back_per_window() -> None:
    """Between checks the losses stay pending on the device (on a GPU each read is a wait for the whole
    queue); at each check every pending step reaches the logger under its own step number, with one
    read-back for all of them, and the progress bar gets a host tensor (which it reads every step)."""
    model = ScriptedModel(nan_from=10**9)
    module = Sparse4DLightning(model, optim_config(), total_steps=10, finite_check_interval=4)
    logger = RecordingLogger()
    after_batch: list[tuple[int, int]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            after_batch.append((len(pl_module._loss_log), len(logger.rows)))

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, callbacks=[Watch()])
    reads: list[int] = []
    flatten = torch.Tensor.tolist

    def counted_tolist(self, *args, **kwargs):
        reads.append(self.numel())
        return flatten(self, *args, **kwargs)

    torch.Tensor.tolist = counted_tolist
    try:
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches(10), batch_size=None))
    finally:
        torch.Tensor.tolist = flatten
    assert after_batch == [(1, 0), (2, 0), (3, 0), (0, 4), (1, 4), (2, 4), (3, 4), (0, 8), (1, 8), (2, 8)]
    assert reads == [8, 8]  # two windows of 4 steps x 2 values, one read each
    pending = trainer.callback_metrics["train_loss"]
    assert pending.device.type == "cpu" and float(pending) == pytest.approx(logger.rows[7][1]["train_loss"])
    module.check_finite()  # what the trainer's epoch end does: the last two steps
    assert [step for step, _ in logger.rows] == list(range(10))  # Lightning itself logged nothing per step
    assert all(set(metrics) == {"train_loss", "train_loss_cls"} for _, metrics in logger.rows)
    assert [metrics["train_loss"] for _, metrics in logger.rows] == pytest.approx(
        [metrics["train_loss_cls"] for _, metrics in logger.rows])  # the scripted model's only loss term


class FailingModel(ScriptedModel):
    """Raises (as an out-of-memory would) in the forward of batch `fail_at`."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(nan_from=10**9)
        self.fail_at = fail_at

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.calls == self.fail_at:
            raise RuntimeError("simulated failure")
        return super().forward(batch)

    def reset_temporal_state(self) -> None:  # called by the lifecycle at each epoch start
        pass


def test_a_failed_run_still_logs_the_steps_since_the_last_read_back(tmp_path) -> None:
    from sparse4d.engine.callbacks import LifecycleSettings, TrainingLifecycle

    settings = LifecycleSettings(results_dir=tmp_path, num_epochs=1, checkpoint_interval=100, checkpoint_unit="epoch",
                                 validation_interval=1, seed=0, spec={}, classes=["a", "b", "c"])
    module = Sparse4DLightning(FailingModel(fail_at=6), optim_config(), total_steps=10, finite_check_interval=4)
    logger = RecordingLogger()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[TrainingLifecycle(settings, None, None)])
    with pytest.raises(RuntimeError, match="simulated failure"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches(10), batch_size=None))
    # steps 0-3 were read back after batch 3; 4 and 5 were pending when batch 6 failed
    assert [step for step, metrics in logger.rows if "train_loss" in metrics] == [0, 1, 2, 3, 4, 5]
