"""`train.*`: optimisation, schedule, precision, checkpoints and GPUs.

Unlike TAO, `grad_clip`, `lr_scheduler` and `paramwise_cfg` are typed sections (same defaults), so each
key is validated and AutoML can search `grad_clip.max_norm` and the backbone `lr_mult`.
"""
from __future__ import annotations

from typing import Literal

from .fields import AUTOML_OFF, Automl, Section, field, section


class GradClipConfig(Section):
    max_norm: float = field(25.0, "Clip the gradient norm to this (0 disables clipping).", ge=0.0, automl=Automl(valid_min=5.0, valid_max=50.0, default_searched=True))
    norm_type: Literal["L2", "L1", "inf"] = field("L2", "Norm used for clipping.")


class LrSchedulerConfig(Section):
    policy: Literal["cosine"] = field("cosine", "Decay after warmup: cosine to min_lr_ratio * lr.")
    warmup: Literal["linear"] = field("linear", "Warmup shape.")
    warmup_iters: int = field(500, "Warmup optimizer steps (capped at the run's total steps).", ge=0)
    warmup_ratio: float = field(0.333333, "Learning rate at step 0 as a fraction of lr.", ge=0.0, le=1.0)
    min_lr_ratio: float = field(0.001, "Final learning rate as a fraction of lr.", ge=0.0, le=1.0)


class LrMultConfig(Section):
    lr_mult: float = field(0.2, "Learning-rate multiplier for the image backbone.", ge=0.0, automl=Automl(valid_min=0.05, valid_max=1.0, log_scale=True, default_searched=True))


class CustomKeysConfig(Section):
    img_backbone: LrMultConfig = section(LrMultConfig, "Backbone parameter group.")


class ParamwiseConfig(Section):
    custom_keys: CustomKeysConfig = section(CustomKeysConfig, "Per-module optimizer settings.")


class OptimConfig(Section):
    type: Literal["adamw", "adam", "sgd"] = field("adamw", "Optimizer type.", automl=Automl(option_weights=(0.8, 0.15, 0.05)))
    lr: float = field(5e-05, "Learning rate.", ge=0.0, automl=Automl(valid_min=1e-5, valid_max=4e-4, log_scale=True, default_searched=True))
    weight_decay: float = field(0.001, "Weight decay.", ge=0.0, automl=Automl(valid_min=1e-4, valid_max=0.1, log_scale=True, default_searched=True))
    momentum: float = field(0.9, "Momentum (sgd only).", ge=0.0, le=1.0, automl=Automl(valid_min=0.8, valid_max=0.99, depends_on=("train.optim.type",)))
    paramwise_cfg: ParamwiseConfig = section(ParamwiseConfig, "Parameter-wise settings.")
    grad_clip: GradClipConfig = section(GradClipConfig, "Gradient clipping.")
    lr_scheduler: LrSchedulerConfig = section(LrSchedulerConfig, "Learning-rate schedule.")


class CudnnConfig(Section):
    benchmark: bool = field(False, "cudnn.benchmark.")
    deterministic: bool = field(True, "cudnn.deterministic.")


class TrainConfig(Section):
    num_gpus: int = field(1, "GPUs per node.", ge=1, popular=True, automl=AUTOML_OFF)
    gpu_ids: list[int] = field([0], "GPU indices (length must equal num_gpus).", popular=True, automl=AUTOML_OFF)
    num_nodes: int = field(1, "Nodes (multi-node when > 1).", ge=1, popular=True, automl=AUTOML_OFF)
    seed: int = field(1234, "Random seed (-1: do not seed).", ge=-1, automl=AUTOML_OFF)
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.", automl=AUTOML_OFF)
    num_epochs: int = field(10, "Epochs to train.", ge=1, popular=True, automl=AUTOML_OFF)
    checkpoint_interval: int = field(1, "Write a checkpoint every this many units.", ge=1, automl=AUTOML_OFF)
    checkpoint_interval_unit: Literal["epoch", "step"] = field("epoch", "Unit of checkpoint_interval.", automl=AUTOML_OFF)
    validation_interval: int = field(1, "Validate every this many epochs.", ge=1, automl=AUTOML_OFF)
    resume_training_checkpoint_path: str = field("", "Checkpoint to resume from (model, optimizer, scheduler, step, RNG).", automl=AUTOML_OFF)
    results_dir: str = field("", "Train results folder (defaults to results_dir).", automl=AUTOML_OFF)
    pretrained_model_path: str = field("", "ImageNet backbone or full-model weights to start from.", automl=AUTOML_OFF)
    optim: OptimConfig = section(OptimConfig, "Optimizer.")
    precision: Literal["bf16", "fp16", "fp32"] = field("bf16", "Training precision (CPU falls back to fp32 with a warning).", automl=AUTOML_OFF)
    compile: Literal["off", "default", "reduce-overhead"] = field(
        "off", "torch.compile the backbone, neck, each decoder layer and the losses on CUDA GPUs; reduce-overhead also replays them "
        "from CUDA graphs (over 2x faster steps than off at the default config on an H100/H200). The first two steps compile for "
        "several minutes (7.4 on a fresh H100). Ignored on CPU.",
        automl=AUTOML_OFF)
