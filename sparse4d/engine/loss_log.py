"""Per-step training losses kept on the device and read back together every few steps.

Why: reading a CUDA tensor's value (`.item()`, `float()`) waits until the GPU has run everything
queued before it. Logged through `LightningModule.log` with `log_every_n_steps=1`, the losses were
converted to Python numbers after every optimizer step, so the GPU drained at every step boundary and
the host's next forward (the step is host-bound, benchmarks/README.md) no longer overlapped the
previous step's backward. Here each step's values stay on the device; one copy reads a whole window
back, and each step is still written to the loggers under its own step number.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepLosses:
    step: int  # optimizer steps done before this one in this process (the loggers' step)
    batch_idx: int  # batch index within its epoch
    values: dict[str, float]


class DeferredLossLog:
    """`add` a step's scalar loss tensors (no host sync); `flush` reads all pending steps with one."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, list[str], Tensor]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, step: int, batch_idx: int, losses: dict[str, Tensor]) -> None:
        values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
        self._pending.append((step, batch_idx, list(losses), values))

    def flush(self) -> list[StepLosses]:
        """The pending steps' values as floats, oldest first; the buffer is emptied."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        flat = torch.cat([values for *_, values in pending]).tolist()  # the one host sync
        rows, start = [], 0
        for step, batch_idx, names, _ in pending:
            rows.append(StepLosses(step, batch_idx, dict(zip(names, flat[start:start + len(names)]))))
            start += len(names)
        return rows
