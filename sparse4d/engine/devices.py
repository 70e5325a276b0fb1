"""Accelerator, devices, precision and DDP settings from the spec, with the CPU fallbacks.

Precision bf16/fp16 need a GPU (bf16 also needs hardware support); on CPU the run falls back to fp32
with a warning instead of failing or silently running slow emulated half precision.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from sparse4d.errors import Sparse4DError

LOG = logging.getLogger(__name__)
LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
OOM_KNOBS = ("dataset.num_frames", "dataset.batch_size", "model.input_shape / dataset.augmentation.final_dim",
             "model.head.instance_bank.num_temp_instances")


class PrecisionFallbackWarning(UserWarning):
    """Asked-for precision is not available on this machine; running fp32."""


@dataclass
class DeviceSettings:
    accelerator: str  # "gpu" | "cpu"
    devices: Any  # list of GPU ids, or 1
    num_nodes: int
    precision: str  # Lightning precision string
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_precision(requested: str, on_gpu: bool) -> str:
    if requested == "fp32":
        return LIGHTNING_PRECISION["fp32"]
    if not on_gpu:
        message = f"precision {requested} needs a CUDA GPU; this run uses fp32 on CPU"
        warnings.warn(message, PrecisionFallbackWarning, stacklevel=2)
        LOG.warning("%s", message)
        return LIGHTNING_PRECISION["fp32"]
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        message = "this GPU does not support bf16; this run uses fp16 mixed precision"
        warnings.warn(message, PrecisionFallbackWarning, stacklevel=2)
        return LIGHTNING_PRECISION["fp16"]
    return LIGHTNING_PRECISION[requested]


def resolve_devices(num_gpus: int, gpu_ids: list[int], num_nodes: int, precision: str) -> DeviceSettings:
    on_gpu = torch.cuda.is_available()
    lightning_precision = resolve_precision(precision, on_gpu)
    if not on_gpu:
        if num_gpus > 1 or num_nodes > 1:
            LOG.warning("no CUDA GPU: num_gpus=%d / num_nodes=%d ignored, training on one CPU process", num_gpus, num_nodes)
        return DeviceSettings("cpu", 1, 1, lightning_precision, 1)
    available = torch.cuda.device_count()
    ids = list(gpu_ids) if len(gpu_ids) == num_gpus else list(range(num_gpus))
    bad = [i for i in ids if i >= available]
    if bad:
        raise Sparse4DError(f"gpu_ids {ids} name GPUs this machine lacks (it has {available})", key="train.gpu_ids",
                            hint="lower num_gpus or fix gpu_ids")
    return DeviceSettings("gpu", ids, num_nodes, lightning_precision, len(ids) * num_nodes)


def oom_error(exc: BaseException, action: str) -> Sparse4DError:
    return Sparse4DError(f"{action} ran out of GPU memory ({str(exc).splitlines()[0][:200]})",
                         hint="lower one of " + ", ".join(OOM_KNOBS) + "; checkpoints already written are kept")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def prepare_model_for_device(model: torch.nn.Module) -> torch.nn.Module:
    """On CUDA: plug in the fused Triton aggregation (used where `use_deformable_func` allows it) and
    keep activations channels_last so the aggregation reads the neck's features without a copy."""
    if not torch.cuda.is_available():
        return model
    from sparse4d.model.fused_aggregation import enable_fused_aggregation

    if enable_fused_aggregation():
        LOG.info("fused Triton deformable aggregation enabled")
    return model.to(memory_format=torch.channels_last)
