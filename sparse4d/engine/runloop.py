"""Run a model over an evaluation loader frame by frame, carrying the temporal state, and collect results."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from sparse4d.engine.compile import eager_regions
from sparse4d.engine.predictions import add_first, results_from_decoded
from sparse4d.model.graphed_stream import GraphedStream


def move_batch(batch: dict[str, Any], device: torch.device, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The batch's tensors (and lists of tensors) on `device`, non-blocking; the keys in `keep` stay
    where they are (the trainer keeps `batch.TARGET_KEYS` on the host)."""
    out = {}
    for key, value in batch.items():
        if key in keep:
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader: Iterable[dict[str, Any]], classes: Sequence[str], *,
                   device: torch.device, tracking_threshold: float | None = None,
                   autocast: Callable[[], Any] | None = None,
                   on_batch: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                   cuda_graphs: bool = False) -> dict[str, list[dict]]:
    """{sample_token: [result box, ...]} over `loader` (frames in time order per slot).

    The instance bank starts empty and is emptied again at the end, so a validation run in the middle
    of training neither sees nor leaves training instances. `tracking_threshold` is the confidence a
    query needs to start a new track (the model's decoder threshold, used here only for track ids:
    every decoded box is kept in the results). `cuda_graphs` on a CUDA device replays each frame
    from a captured graph (`GraphedStream`): same results, a fraction of the launch overhead. Regions
    compiled for training (`train.compile`) run eagerly here.
    """
    was_training = model.training
    saved_threshold = getattr(model, "score_threshold", None)
    model.eval()
    if tracking_threshold is not None and saved_threshold is not None:
        model.score_threshold = float(tracking_threshold)
    model.reset_temporal_state()
    stream = GraphedStream(model) if cuda_graphs and device.type == "cuda" else None
    results: dict[str, list[dict]] = {}
    try:
        for batch in loader:
            batch = move_batch(batch, device)
            with eager_regions(), (autocast() if autocast is not None else contextlib.nullcontext()):
                decoded = model(batch)["decoded"] if stream is None else stream(batch)
            add_first(results, results_from_decoded(decoded, batch, classes))
            if on_batch is not None:
                on_batch(batch, decoded)
    finally:
        model.reset_temporal_state()
        if saved_threshold is not None:
            model.score_threshold = saved_threshold
        model.train(was_training)
    return results
