"""The spec keys SKILL.md highlights, and TAO's shorthand names for keys.

Only key paths and one-line meanings live here; defaults and options are read from the packaged
schemas when rendering, so the documented default is always the one the config models use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parameter:
    """One important spec key: the action schema that holds it, its path, what it does."""

    action: str
    key: str
    meaning: str
    note: str = ""


IMPORTANT_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("train", "model.backbone.type", "Image backbone."),
    Parameter("train", "model.neck.out_channels", "FPN output channels."),
    Parameter("train", "model.neck.num_outs", "FPN output levels."),
    Parameter("train", "model.input_shape", "Network input image size [W, H]."),
    Parameter("train", "model.head.num_output", "Detections kept per frame."),
    Parameter("train", "model.head.num_decoder", "Decoder layers."),
    Parameter("train", "model.head.temporal", "Temporal reasoning with the instance bank."),
    Parameter("train", "model.head.instance_bank.num_anchor", "Instance bank anchors.",
              "At most the rows of anchor_init.npy."),
    Parameter("train", "model.head.instance_bank.num_temp_instances", "Instances carried to the next frame.",
              "Export reads it from the checkpoint's config."),
    Parameter("train", "model.head.deformable_model.max_num_cams", "Camera slots of the camera embedding.",
              "Export reads it from the checkpoint's config."),
    Parameter("train", "model.depth_branch.loss_weight", "Depth supervision loss weight."),
    Parameter("train", "dataset.batch_size", "Per-GPU batch size."),
    Parameter("train", "dataset.num_frames", "Frames per sequence."),
    Parameter("train", "dataset.classes", "Detection classes."),
    Parameter("train", "dataset.num_ids", "Track identities for the re-id loss."),
    Parameter("train", "train.optim.lr", "Learning rate."),
    Parameter("train", "train.optim.paramwise_cfg.custom_keys.img_backbone.lr_mult", "Backbone learning-rate multiplier."),
    Parameter("train", "train.optim.lr_scheduler.policy", "LR schedule."),
    Parameter("train", "train.optim.lr_scheduler.warmup_iters", "Linear warmup iterations."),
    Parameter("train", "train.optim.lr_scheduler.warmup_ratio", "Warmup start ratio."),
    Parameter("train", "train.optim.grad_clip.max_norm", "Gradient clipping norm."),
    Parameter("train", "train.precision", "Training precision."),
    Parameter("evaluate", "evaluate.metrics", "Metrics to compute (add tracking for AMOTA/MOTA/IDF1)."),
    Parameter("evaluate", "evaluate.tracking.enabled", "Assign track ids during evaluation."),
    Parameter("evaluate", "evaluate.tracking.threshold", "Score needed to start a track."),
)

MULTI_GPU_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("train", "train.num_gpus", "Number of GPUs"),
    Parameter("train", "train.gpu_ids", "GPU device indices"),
    Parameter("train", "train.num_nodes", "Number of nodes"),
)

# TAO's shorthand names (kept so workflow prompts written for TAO resolve to the same keys).
SPEC_SHORTHAND_KEYS: dict[str, str] = {
    "num_epochs": "train.num_epochs",
    "num_gpus": "train.num_gpus",
    "batch_size": "dataset.batch_size",
    "learning_rate": "train.optim.lr",
    "num_frames": "dataset.num_frames",
    "num_workers": "dataset.num_workers",
    "data_root": "dataset.data_root",
    "anchor": "model.head.instance_bank.anchor",
    "num_anchor": "model.head.instance_bank.num_anchor",
    "num_temp_instances": "model.head.instance_bank.num_temp_instances",
    "num_output": "model.head.num_output",
    "num_cams": "model.head.deformable_model.num_cams",
    "max_num_cams": "model.head.deformable_model.max_num_cams",
    "train_ann_file": "dataset.train_dataset.ann_file",
    "val_ann_file": "dataset.val_dataset.ann_file",
    "test_ann_file": "dataset.test_dataset.ann_file",
    "calibration_images": "dataset.quant_calibration_dataset.images_dir",
    "pretrained_model": "train.pretrained_model_path",
    "resume_checkpoint": "train.resume_training_checkpoint_path",
    "checkpoint": "evaluate.checkpoint",
    "inference_checkpoint": "inference.checkpoint",
    "export_checkpoint": "export.checkpoint",
    "quantize_model": "quantize.model_path",
    "input_width": "export.input_width",
    "input_height": "export.input_height",
    "export_onnx": "export.onnx_file",
}


def shorthand_action(key: str) -> str:
    """The action whose schema holds a shorthand's key (its top section, train otherwise)."""
    head = key.split(".", 1)[0]
    return head if head in ("evaluate", "inference", "export", "quantize") else "train"
