"""The exported ONNX graph: one frame of the temporal detector with the instance bank as explicit I/O.

Everything frame-local runs inside the graph: backbone, FPN, the decoder with deformable aggregation
(`grid_sample`, opset >= 16), the instance-bank merge, track-ID assignment and the fixed-size top-k
decoder. The caller (sparse4d/engine/onnx_runner.py) only carries the `next_*` outputs into the
`prev_*` inputs of the next frame and computes `time_interval` / `first_frame` from timestamps.

Inputs (B = 1, N = cameras, T = temporal instances, C = embed dims; all from the checkpoint):
  img (B, N, 3, H, W) f32, projection_mat (B, N, 4, 4) f32, image_wh (B, N, 2) f32,
  time_interval (B,) f32 seconds since the previous frame, first_frame (B,) bool,
  tracking_threshold (1,) f32 confidence that starts a new track,
  prev_instance_feature (B, T, C) f32, prev_anchor (B, T, 11) f32, prev_confidence (B, T) f32,
  prev_track_id (B, T) i64 (-1 = none), prev_next_track_id (B,) i64.
Outputs (K = model.head.num_output):
  boxes_3d (B, K, 10), scores_3d (B, K), cls_scores (B, K), labels_3d (B, K) i64, track_ids (B, K) i64
  (-1 = untracked), keep (B, K) bool (score >= tracking_threshold), and the next state
  next_instance_feature, next_anchor, next_confidence, next_track_id, next_next_track_id.

On the first frame of a sequence the `prev_*` values are ignored (any values of the right shape do).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparse4d.errors import SpecError

ONNX_FORMAT = "sparse4d-onnx-frame-1"
MIN_OPSET = 16  # GridSample
IMAGE_INPUTS = ["img", "projection_mat", "image_wh", "time_interval", "first_frame", "tracking_threshold"]
STATE_INPUTS = ["prev_instance_feature", "prev_anchor", "prev_confidence", "prev_track_id", "prev_next_track_id"]
INPUT_NAMES = IMAGE_INPUTS + STATE_INPUTS
DETECTION_OUTPUTS = ["boxes_3d", "scores_3d", "cls_scores", "labels_3d", "track_ids", "keep"]
STATE_OUTPUTS = ["next_instance_feature", "next_anchor", "next_confidence", "next_track_id", "next_next_track_id"]
OUTPUT_NAMES = DETECTION_OUTPUTS + STATE_OUTPUTS
STATE_CARRY = dict(zip(STATE_OUTPUTS, STATE_INPUTS))


@dataclass(frozen=True)
class FrameGraphShape:
    """Static sizes of one exported graph (all taken from the checkpoint except the image size)."""

    batch: int
    num_cams: int
    height: int
    width: int
    num_temp: int
    embed_dims: int
    num_output: int


def backbone_stride(model_cfg: Any) -> int:
    """Input sides must divide by this so every ResNet stage and FPN level has an integer size."""
    used = 4 - int(model_cfg.neck.start_level)
    extra = max(0, int(model_cfg.neck.num_outs) - used)
    return 32 * (2 ** extra)


def check_export_fits(model: Any, model_cfg: Any, *, width: int, height: int, batch: int) -> FrameGraphShape:
    """Refuse an export whose shapes the checkpoint cannot run, naming the key to change."""
    if batch not in (-1, 1):
        raise SpecError(f"batch size {batch} is not exported: the temporal state is per sequence",
                        key="export.batch_size", hint="use -1 or 1 and run sequences one after another")
    stride = backbone_stride(model_cfg)
    if width % stride:
        raise SpecError(f"{width} is not divisible by the backbone stride {stride}", key="export.input_width",
                        hint=f"use a multiple of {stride}, e.g. {max(stride, round(width / stride) * stride)}")
    if height % stride:
        raise SpecError(f"{height} is not divisible by the backbone stride {stride}", key="export.input_height",
                        hint=f"use a multiple of {stride}, e.g. {max(stride, round(height / stride) * stride)}")
    dm = model_cfg.head.deformable_model
    if int(dm.num_cams) > int(dm.max_num_cams):
        raise SpecError(f"the checkpoint's num_cams {dm.num_cams} exceeds max_num_cams {dm.max_num_cams}",
                        key="model.head.deformable_model.max_num_cams",
                        hint="train with max_num_cams >= num_cams (the weight layer is sized by it)")
    bank = model.head.instance_bank
    if bank.num_temp > bank.num_anchor:
        raise SpecError(f"num_temp_instances {bank.num_temp} exceeds num_anchor {bank.num_anchor}",
                        key="model.head.instance_bank.num_temp_instances", hint="keep it <= num_anchor")
    if model.num_output > bank.num_anchor:
        raise SpecError(f"num_output {model.num_output} exceeds num_anchor {bank.num_anchor}",
                        key="model.head.num_output", hint="keep it <= num_anchor")
    return FrameGraphShape(batch=1, num_cams=int(model.num_cams), height=height, width=width, num_temp=int(bank.num_temp),
                           embed_dims=int(bank.embed_dims), num_output=int(model.num_output))


def disable_fused_aggregation(model: nn.Module) -> None:
    """Force the grid_sample aggregation (a fused CUDA kernel is not an ONNX op)."""
    for module in model.modules():
        if hasattr(module, "prefer_fused"):
            module.prefer_fused = False


class FrameGraph(nn.Module):
    """Wraps `Sparse4D.forward_frame` with flat tensor inputs/outputs in the documented order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, img: Tensor, projection_mat: Tensor, image_wh: Tensor, time_interval: Tensor, first_frame: Tensor,
                tracking_threshold: Tensor, prev_instance_feature: Tensor, prev_anchor: Tensor, prev_confidence: Tensor,
                prev_track_id: Tensor, prev_next_track_id: Tensor) -> tuple[Tensor, ...]:
        from sparse4d.model.instance_bank import InstanceBankState

        b = img.shape[0]
        state = InstanceBankState(
            features=prev_instance_feature, anchors=prev_anchor, confidences=prev_confidence, track_ids=prev_track_id,
            next_track_id=prev_next_track_id,
            timestamp=torch.zeros(b, dtype=torch.float64, device=img.device),  # only time_interval matters
            valid=torch.ones(b, dtype=torch.bool, device=img.device),  # first_frame alone says "no history"
        )
        saved = self.model.score_threshold
        self.model.score_threshold = tracking_threshold  # a tensor threshold becomes a graph input
        try:
            out, new = self.model.forward_frame(img, projection_mat, image_wh, time_interval, first_frame, state)
        finally:
            self.model.score_threshold = saved
        return (out["boxes_3d"], out["scores_3d"], out["cls_scores"], out["labels_3d"], out["track_ids"], out["keep"],
                new.features, new.anchors, new.confidences, new.track_ids, new.next_track_id)


def example_graph_inputs(model: nn.Module, shape: FrameGraphShape, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Zero inputs of the graph's shapes (a first frame), as `name -> tensor`."""
    b, n = shape.batch, shape.num_cams
    state = model.initial_state(b, device)
    return {
        "img": torch.zeros(b, n, 3, shape.height, shape.width, device=device),
        "projection_mat": torch.eye(4, device=device).expand(b, n, 4, 4).clone(),
        "image_wh": torch.tensor([float(shape.width), float(shape.height)], device=device).expand(b, n, 2).clone(),
        "time_interval": torch.full((b,), float(model.default_time_interval), device=device),
        "first_frame": torch.ones(b, dtype=torch.bool, device=device),
        "tracking_threshold": torch.full((1,), float(model.score_threshold), device=device),
        "prev_instance_feature": state.features,
        "prev_anchor": state.anchors,
        "prev_confidence": state.confidences,
        "prev_track_id": state.track_ids,
        "prev_next_track_id": state.next_track_id,
    }


def graph_metadata(model: nn.Module, shape: FrameGraphShape, classes: list[str]) -> dict[str, str]:
    """Stored in the ONNX file's metadata_props so the runner needs no checkpoint or spec to use it."""
    return {
        "format": ONNX_FORMAT,
        "classes": json.dumps(list(classes)),
        "default_time_interval": repr(float(model.default_time_interval)),
        "default_tracking_threshold": repr(float(model.score_threshold)),
        "num_cams": str(shape.num_cams),
        "num_temp_instances": str(shape.num_temp),
        "embed_dims": str(shape.embed_dims),
        "num_output": str(shape.num_output),
        "input_width": str(shape.width),
        "input_height": str(shape.height),
    }


def export_frame_graph(model: nn.Module, shape: FrameGraphShape, classes: list[str], target: Path, *, opset: int,
                       device: torch.device | str = "cpu", verbose: bool = False) -> Path:
    """Trace the frame graph to `target` (written to a temporary file, checked, then renamed)."""
    import os
    import tempfile

    import onnx

    if opset < MIN_OPSET:
        raise SpecError(f"opset {opset} has no GridSample (deformable aggregation needs it)", key="export.opset_version",
                        hint=f"use {MIN_OPSET} or newer (17 is the default)")
    model = model.to(device).eval()
    disable_fused_aggregation(model)
    inputs = example_graph_inputs(model, shape, device)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks in traced code are constants of this export; the legacy exporter is chosen on purpose
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            # .eval() on the wrapper: the exporter restores the wrapper's own mode afterwards, recursively,
            # and a fresh wrapper is in training mode, which would leave `model` training (dropout on).
            torch.onnx.export(FrameGraph(model).eval(), tuple(inputs.values()), tmp, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              opset_version=opset, do_constant_folding=True, dynamo=False, verbose=verbose)
        proto = onnx.load(tmp)
        for name, value in graph_metadata(model, shape, classes).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = name, value
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; an exported model is meant to be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
