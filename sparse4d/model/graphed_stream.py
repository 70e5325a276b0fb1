"""Streaming inference replayed from one CUDA graph per frame.

Eval-mode inference of the default config is bound by kernel launches (a few thousand per frame, most
in the decoder layers). `Sparse4D.predict_frame` is a pure function of fixed-shape tensors, so a whole
frame (backbone, neck, head, top-k decode, next instance-bank state) can be captured once and replayed
with one launch. The instance-bank state lives in the graph's own buffers: the captured frame ends by
copying its next state over its input state, so consecutive replays carry tracks like the eager loop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparse4d.batch import normalized_images

from .instance_bank import InstanceBankState

LOG = logging.getLogger(__name__)


@dataclass
class _CapturedFrame:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    state: InstanceBankState
    decoded: dict[str, Tensor]


def _frame_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    return {
        "img": normalized_images(batch, device),
        "projection_mat": batch["projection_mat"].to(device),
        "image_wh": batch["image_wh"].to(device),
        "timestamp": batch["timestamp"].to(device=device, dtype=torch.float64),
        "first_frame": batch["first_frame"].to(device=device, dtype=torch.bool),
    }


class GraphedStream:
    """Calls like `model(batch)["decoded"]` in eval mode, each frame one replay of a captured graph.

    One graph per input signature (shapes, dtypes, autocast state); a new signature starts with an
    empty instance bank, as the eager model does when the batch size changes. `reset()` forgets the
    carried instances. Returned tensors are copies, safe to keep.
    """

    def __init__(self, model: torch.nn.Module, max_graphs: int = 4, warmup_iters: int = 2) -> None:
        self.model = model
        self.max_graphs = max_graphs
        self.warmup_iters = warmup_iters
        self._frames: dict[tuple, _CapturedFrame] = {}
        self._active: tuple | None = None
        self._pool = None

    @property
    def num_graphs(self) -> int:
        return len(self._frames)

    def reset(self) -> None:
        """The next frame starts a new sequence: no carried instances, track ids from 0."""
        self._active = None

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.model.training:
            raise RuntimeError("GraphedStream replays eval-mode frames: call model.eval() first")
        device = next(self.model.parameters()).device
        inputs = _frame_inputs(batch, device)
        enabled, dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
        key = (enabled, dtype, *((name, tuple(t.shape), t.dtype) for name, t in inputs.items()))
        frame = self._frames.get(key)
        if frame is None and len(self._frames) >= self.max_graphs:
            raise RuntimeError(f"GraphedStream: more than {self.max_graphs} input signatures; use the eager model for this data")
        if frame is None:
            frame = self._capture(inputs, device, enabled, dtype)
            self._frames[key] = frame
        if key != self._active:
            self._clear_state(frame, inputs["img"].shape[0], device)
            self._active = key
        for name, value in inputs.items():
            frame.inputs[name].copy_(value)
        frame.graph.replay()
        return {name: value.clone() for name, value in frame.decoded.items()}

    def _clear_state(self, frame: _CapturedFrame, batch_size: int, device: torch.device) -> None:
        empty = self.model.initial_state(batch_size, device)
        for dst, src in zip(frame.state.as_tuple(), empty.as_tuple()):
            dst.copy_(src)

    def _capture(self, inputs: dict[str, Tensor], device: torch.device, enabled: bool, dtype: torch.dtype) -> _CapturedFrame:
        static = {name: value.clone() for name, value in inputs.items()}
        state = self.model.initial_state(inputs["img"].shape[0], device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # autocast's weight-cast cache would keep casts in the graph's memory past the capture: off while capturing
        with torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # first runs: cuDNN autotuning, Triton compilation, lazy init
                for _ in range(self.warmup_iters):
                    self.model.predict_frame(**static, state=state)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph, pool=self._pool):
                decoded, next_state = self.model.predict_frame(**static, state=state)
                for dst, src in zip(state.as_tuple(), next_state.as_tuple()):
                    dst.copy_(src)
        LOG.info("graphed stream: captured %s", {name: tuple(t.shape) for name, t in static.items()})
        return _CapturedFrame(graph=graph, inputs=static, state=state, decoded=decoded)
