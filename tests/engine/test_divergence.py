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
    with pytest.raises(Sparse4DError, match="diverged.*between batch 4 and 7"):
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
