"""The collector is off while training steps run, collects on its schedule, and comes back after."""
from __future__ import annotations

import gc

import pytest
import pytorch_lightning as pl
import torch

from sparse4d.engine.lightning_module import Sparse4DLightning
from sparse4d.engine.scheduled_gc import ScheduledGarbageCollection
from sparse4d.errors import Sparse4DError

from .test_divergence import ScriptedModel, batches, optim_config


def _fit(model: ScriptedModel, steps: int, interval: int) -> tuple[list[bool], list[int]]:
    enabled_in_steps: list[bool] = []
    collections: list[int] = []

    training = [False]

    def count(phase: str, info: dict) -> None:
        if phase == "start" and training[0]:
            collections.append(info["generation"])

    class Watch(pl.Callback):  # runs before the scheduler's hooks (callbacks run in list order)
        def on_train_start(self, trainer, pl_module) -> None:
            training[0] = True

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            enabled_in_steps.append(gc.isenabled())

        def on_train_end(self, trainer, pl_module) -> None:
            training[0] = False

    module = Sparse4DLightning(model, optim_config(), total_steps=steps, finite_check_interval=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Watch(), ScheduledGarbageCollection(interval=interval)])
    gc.callbacks.append(count)
    try:
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches(steps), batch_size=None))
    finally:
        gc.callbacks.remove(count)
    return enabled_in_steps, collections


def test_collector_paused_during_steps_and_restored() -> None:
    assert gc.isenabled()
    enabled, collections = _fit(ScriptedModel(nan_from=10**9), steps=7, interval=3)
    assert enabled == [False] * 7
    assert gc.isenabled()
    # a full collection at the start, young ones after steps 3 and 6, a full one at the epoch end
    # (automatic ones would be generation 0 and far more frequent)
    assert collections == [2, 1, 1, 2]


def test_collector_comes_back_when_training_fails() -> None:
    with pytest.raises(Sparse4DError, match="diverged"):
        _fit(ScriptedModel(nan_from=2), steps=8, interval=50)
    assert gc.isenabled()
