"""`evaluate.*`, `inference.*`, `export.*` and `quantize.*` sections."""
from __future__ import annotations

from typing import Any, Literal

from .fields import AUTOML_OFF, Section, field, section

MISSING = "???"


class TrackingConfig(Section):
    enabled: bool = field(True, "Assign track ids and (for evaluate) score tracking.")
    threshold: float = field(0.2, "Score needed to start a new track.", ge=0.0, le=1.0)


class EvaluateConfig(Section):
    num_gpus: int = field(1, "GPUs.", ge=1, popular=True)
    gpu_ids: list[int] = field([0], "GPU indices.", popular=True, automl=AUTOML_OFF)
    num_nodes: int = field(1, "Nodes.", ge=1, popular=True)
    checkpoint: str = field(MISSING, "Checkpoint (.pth, or quantized_model_torchao.pth) to evaluate.")
    trt_engine: str = field("", "TensorRT engine (not supported here; must stay empty).")
    results_dir: str = field("", "Evaluate results folder (defaults to results_dir).")
    batch_size: int = field(-1, "Batch size (-1: dataset.batch_size).", ge=-1)
    metrics: list[Literal["detection", "tracking"]] = field(["detection"], "Metrics to compute.", min_length=1, automl=AUTOML_OFF)
    tracking: TrackingConfig = section(TrackingConfig, "Tracking.", automl=AUTOML_OFF)


class InferenceConfig(Section):
    num_gpus: int = field(1, "GPUs.", ge=1, popular=True)
    gpu_ids: list[int] = field([0], "GPU indices.", popular=True, automl=AUTOML_OFF)
    num_nodes: int = field(1, "Nodes.", ge=1, popular=True)
    checkpoint: str = field(MISSING, "Checkpoint (.pth) or exported .onnx to run.")
    trt_engine: str = field("", "TensorRT engine (not supported here; must stay empty).")
    results_dir: str = field("", "Inference results folder (defaults to results_dir).")
    batch_size: int = field(-1, "Batch size (-1: dataset.batch_size).", ge=-1)
    jsonfile_prefix: str = field("sparse4d_pred", "Prefix of the results JSON file.")
    output_nvschema: bool = field(True, "Also write per-frame results in a flat per-object JSON lines file.")
    tracking: TrackingConfig = section(TrackingConfig, "Tracking.", automl=AUTOML_OFF)


class ExportConfig(Section):
    results_dir: str = field("", "Export results folder (defaults to results_dir).")
    gpu_id: int = field(0, "GPU used for export (export runs on CPU when on_cpu or no GPU).", ge=0)
    checkpoint: str = field(MISSING, "Trained checkpoint to export.")
    onnx_file: str = field(MISSING, "ONNX file to write.")
    on_cpu: bool = field(False, "Export on CPU.")
    input_channel: Literal[1, 3] = field(3, "Input channels (3 only).", tao_type="ordered_int")
    input_width: int = field(960, "Exported image width.", ge=32)
    input_height: int = field(544, "Exported image height.", ge=32)
    opset_version: int = field(17, "ONNX opset.", ge=1)
    batch_size: int = field(-1, "Batch size (-1 or 1; batch > 1 is rejected: the temporal state is per sequence).", ge=-1)
    verbose: bool = field(False, "Verbose export logs.")
    format: Literal["onnx", "xdl"] = field("onnx", "Export format (onnx only).")


class QuantizeConfig(Section):
    backend: Literal["modelopt.pytorch", "torchao", "modelopt.onnx"] = field("torchao", "Quantization backend (torchao only).")
    mode: Literal["static_ptq", "weight_only_ptq"] = field("weight_only_ptq", "Weight-only int8, or static int8 with calibration.")
    algorithm: Literal["minmax", "max", "entropy", "awq_clip", "awq_lite", "awq_full", "rtn_dq"] = field("minmax", "Calibration algorithm (minmax for torchao).")
    layers: list[str] = field([], "Module name patterns to quantize (empty: every eligible layer).", automl=AUTOML_OFF)
    skip_names: list[str] = field([], "Module name patterns never quantized.", automl=AUTOML_OFF)
    model_path: str = field("", "Trained checkpoint to quantize.")
    results_dir: str = field("", "Quantize results folder (defaults to results_dir).")
    backend_kwargs: dict[str, Any] | None = field(None, "Extra backend options.", automl=AUTOML_OFF)
    device: str = field("cuda", "Device (cuda, cuda:N or cpu; cuda falls back to cpu with a warning when absent).", pattern=r"^(cuda|cpu|trt|cuda:[0-9]+)$")
