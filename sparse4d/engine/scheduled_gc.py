"""Python's cyclic garbage collector paused while training, run on a schedule instead.

Why: after torch.compile the interpreter tracks about 820,000 objects, and the automatic collector
ran about four young-generation collections per training step of the default head, 1.3 ms of host
time per step on the CI box (benchmarks/README.md, `benchmarks/gc_pauses.py`), while a steady
training step leaves no cyclic garbage at all (no unreachable object, same script).
The GPU step is host-bound, so that time was lost. With automatic collection off, a
young-generation collection runs every `interval` training steps and a full one at each epoch end,
so cyclic garbage that does appear is still freed; the collector's previous state comes back when
training ends or fails.
"""
from __future__ import annotations

import gc
from typing import Any

import pytorch_lightning as pl


class ScheduledGarbageCollection(pl.Callback):
    def __init__(self, interval: int = 50) -> None:
        self.interval = max(int(interval), 1)
        self._steps = 0
        self._was_enabled: bool | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._was_enabled = gc.isenabled()
        gc.collect()  # start from a clean heap
        gc.disable()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps += 1
        if self._steps % self.interval == 0:
            gc.collect(1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gc.collect()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
