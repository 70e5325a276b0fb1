"""Checks a schema cannot express: cross-key consistency, `???` placeholders and files the spec names.

These run before any GPU time is spent, in `runner validate spec`, in the runners and at the start of
every trainer action.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from .dataset import MISSING
from .loading import SpecIssue, SpecReport

RESNET_STAGE_CHANNELS = {
    "resnet_18": [64, 128, 256, 512],
    "resnet_34": [64, 128, 256, 512],
    "resnet_50": [256, 512, 1024, 2048],
    "resnet_101": [256, 512, 1024, 2048],
}
ANCHOR_VALUES = 11


class MissingFileIssue(SpecIssue):
    """A file the spec names is absent (exit code 4 rather than 3)."""


def is_remote(path: str) -> bool:
    return "://" in path


def walk_leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _unused_by(action: str, key: str) -> bool:
    """Data keys export never reads (it takes classes and the model only), so ??? may stay there."""
    return action == "export" and key.startswith("dataset.") and (key == "dataset.data_root" or key.endswith(".ann_file"))


def check_semantics(report: SpecReport, *, for_launch: bool = False, check_files: bool = True) -> SpecReport:
    """Add cross-key, placeholder and file errors/warnings to a schema-valid report."""
    spec = report.spec
    if spec is None:
        return report
    errors, warnings = report.errors, report.warnings
    for key, value in walk_leaves(spec.model_dump()):
        if value == MISSING and not _unused_by(report.action, key):
            errors.append(SpecIssue(key, "still holds the placeholder ???", "set a real value (spec file or -o key=value)"))
    if hasattr(spec, "model"):
        _check_model(spec, errors, warnings)
        _check_dataset(spec, errors, warnings)
        if check_files:
            _check_anchor_file(spec, errors)
            _check_annotation_files(report.action, spec, errors)
    if report.action == "train":
        _check_train(spec, errors, warnings, for_launch)
    if report.action == "dataset_convert" and check_files:
        root = spec.aicity.root
        if root != MISSING and not is_remote(root) and not Path(root).is_dir():
            errors.append(MissingFileIssue("aicity.root", f"folder {root} does not exist", "point aicity.root at the AICity root holding <split>/<scene> folders"))
    _check_action_section(report.action, spec, errors, warnings, check_files)
    if getattr(spec, "encryption_key", ""):
        warnings.append(SpecIssue("encryption_key", "a key written in the spec file is a secret on disk", "set SPARSE4D_ENCRYPTION_KEY in the environment instead"))
    return report


def _check_model(spec: BaseModel, errors: list[SpecIssue], warnings: list[SpecIssue]) -> None:
    m = spec.model  # type: ignore[attr-defined]
    head, bank, dm = m.head, m.head.instance_bank, m.head.deformable_model
    if bank.num_temp_instances > bank.num_anchor:
        errors.append(SpecIssue("model.head.instance_bank.num_temp_instances", f"{bank.num_temp_instances} exceeds num_anchor {bank.num_anchor}", "carried instances are a subset of the anchors: lower it or raise num_anchor"))
    if head.num_output > bank.num_anchor:
        errors.append(SpecIssue("model.head.num_output", f"{head.num_output} exceeds num_anchor {bank.num_anchor}", "the decoder keeps at most num_anchor boxes"))
    if dm.num_cams > dm.max_num_cams:
        errors.append(SpecIssue("model.head.deformable_model.num_cams", f"{dm.num_cams} exceeds max_num_cams {dm.max_num_cams}", "raise model.head.deformable_model.max_num_cams"))
    expected = RESNET_STAGE_CHANNELS[m.backbone.type]
    if m.neck.in_channels != expected:
        errors.append(SpecIssue("model.neck.in_channels", f"{m.neck.in_channels} does not match {m.backbone.type} stages {expected}", f"set model.neck.in_channels={expected}"))
    for key, value in (
        ("model.neck.out_channels", m.neck.out_channels),
        ("model.head.embed_dims", head.embed_dims),
        ("model.head.instance_bank.embed_dims", bank.embed_dims),
        ("model.head.deformable_model.embed_dims", dm.embed_dims),
        ("model.depth_branch.embed_dims", m.depth_branch.embed_dims),
    ):
        if value != m.embed_dims:
            errors.append(SpecIssue(key, f"{value} differs from model.embed_dims {m.embed_dims}", f"set {key}={m.embed_dims}"))
    if m.neck.num_outs != dm.num_levels:
        errors.append(SpecIssue("model.head.deformable_model.num_levels", f"{dm.num_levels} differs from model.neck.num_outs {m.neck.num_outs}", "sample every FPN level: make them equal"))
    if m.depth_branch.num_depth_layers > m.neck.num_outs:
        errors.append(SpecIssue("model.depth_branch.num_depth_layers", f"{m.depth_branch.num_depth_layers} exceeds model.neck.num_outs {m.neck.num_outs}", "depth is predicted on FPN levels"))
    if m.embed_dims % dm.num_groups:
        errors.append(SpecIssue("model.head.deformable_model.num_groups", f"embed_dims {m.embed_dims} is not divisible by {dm.num_groups}", "pick a divisor of model.embed_dims"))
    refines = head.operation_order.count("refine")
    if refines != head.num_decoder:
        errors.append(SpecIssue("model.head.num_decoder", f"{head.num_decoder} but operation_order has {refines} refine steps", f"set model.head.num_decoder={refines} or edit operation_order"))
    if head.num_single_frame_decoder > head.num_decoder:
        errors.append(SpecIssue("model.head.num_single_frame_decoder", f"{head.num_single_frame_decoder} exceeds num_decoder {head.num_decoder}", None))
    attn_dims = m.embed_dims * (2 if head.decouple_attn else 1)
    for key, value in (("model.head.graph_model.embed_dims", head.graph_model.embed_dims), ("model.head.temp_graph_model.embed_dims", head.temp_graph_model.embed_dims), ("model.head.ffn.in_channels", head.ffn.in_channels)):
        if value != attn_dims:
            errors.append(SpecIssue(key, f"{value} but decouple_attn={head.decouple_attn} with embed_dims {m.embed_dims} needs {attn_dims}", f"set {key}={attn_dims}"))
    for key, heads_, dims in (("model.head.graph_model.num_heads", head.graph_model.num_heads, head.graph_model.embed_dims), ("model.head.temp_graph_model.num_heads", head.temp_graph_model.num_heads, head.temp_graph_model.embed_dims)):
        if dims % heads_:
            errors.append(SpecIssue(key, f"{dims} dims are not divisible by {heads_} heads", None))
    if any(e.key.startswith("model.") for e in errors):
        return  # the model-level check would repeat what is already reported
    from ..errors import SpecError
    from ..model.unsupported import check_supported  # torch-free by contract

    try:
        check_supported(m)
    except SpecError as exc:
        errors.append(SpecIssue(exc.key or "model", exc.message, exc.hint))


def _check_dataset(spec: BaseModel, errors: list[SpecIssue], warnings: list[SpecIssue]) -> None:
    d, m = spec.dataset, spec.model  # type: ignore[attr-defined]
    if len(set(d.classes)) != len(d.classes):
        dupes = sorted({c for c in d.classes if d.classes.count(c) > 1})
        errors.append(SpecIssue("dataset.classes", f"duplicate class names {dupes}", "list each class once"))
    if any(not c.strip() for c in d.classes):
        errors.append(SpecIssue("dataset.classes", "empty class name", None))
    if list(reversed(d.augmentation.final_dim)) != list(m.input_shape):
        errors.append(SpecIssue("dataset.augmentation.final_dim", f"{d.augmentation.final_dim} ([H, W]) disagrees with model.input_shape {m.input_shape} ([W, H])", f"set dataset.augmentation.final_dim={[m.input_shape[1], m.input_shape[0]]}"))
    if d.use_h5_file_for_rgb:
        errors.append(SpecIssue("dataset.use_h5_file_for_rgb", "RGB from H5 is not supported", "dataset_convert extracts RGB frames from the mp4 videos; set it to false"))
    for key, lim in (("dataset.augmentation.resize_lim", d.augmentation.resize_lim), ("dataset.augmentation.rot_lim", d.augmentation.rot_lim), ("dataset.augmentation.rot3d_range", d.augmentation.rot3d_range), ("dataset.augmentation.bot_pct_lim", d.augmentation.bot_pct_lim)):
        if lim[0] > lim[1]:
            errors.append(SpecIssue(key, f"{lim} has min > max", "write [min, max]"))
    if d.augmentation.resize_lim[0] <= 0:
        errors.append(SpecIssue("dataset.augmentation.resize_lim", "resize factors must be positive", None))


def _check_train(spec: BaseModel, errors: list[SpecIssue], warnings: list[SpecIssue], for_launch: bool) -> None:
    t = spec.train  # type: ignore[attr-defined]
    if len(t.gpu_ids) != t.num_gpus:
        errors.append(SpecIssue("train.gpu_ids", f"{len(t.gpu_ids)} ids for num_gpus={t.num_gpus}", "list exactly num_gpus GPU indices"))
    if len(set(t.gpu_ids)) != len(t.gpu_ids) or any(g < 0 for g in t.gpu_ids):
        errors.append(SpecIssue("train.gpu_ids", f"{t.gpu_ids} has duplicates or negative ids", None))
    if t.checkpoint_interval_unit == "epoch" and t.checkpoint_interval > t.num_epochs:
        errors.append(SpecIssue("train.checkpoint_interval", f"{t.checkpoint_interval} epochs exceeds num_epochs {t.num_epochs}: no checkpoint would be written", f"set train.checkpoint_interval <= {t.num_epochs}"))
    if t.validation_interval > t.num_epochs:
        warnings.append(SpecIssue("train.validation_interval", f"{t.validation_interval} exceeds num_epochs {t.num_epochs}: no validation (no val_mAP) during training", "AutoML needs val_mAP: lower it"))
    if t.num_epochs % t.validation_interval:
        warnings.append(SpecIssue("train.validation_interval", f"the last epoch ({t.num_epochs}) is not validated", "pick a divisor of num_epochs"))
    if t.resume_training_checkpoint_path and not is_remote(t.resume_training_checkpoint_path) and not Path(t.resume_training_checkpoint_path).is_file():
        errors.append(MissingFileIssue("train.resume_training_checkpoint_path", f"{t.resume_training_checkpoint_path} does not exist", None))
    if t.pretrained_model_path and not is_remote(t.pretrained_model_path) and not Path(t.pretrained_model_path).is_file():
        errors.append(MissingFileIssue("train.pretrained_model_path", f"{t.pretrained_model_path} does not exist", None))
    if for_launch and spec.wandb.enable and not os.environ.get("WANDB_API_KEY"):  # type: ignore[attr-defined]
        errors.append(SpecIssue("wandb.enable", "is true but WANDB_API_KEY is not set", "export WANDB_API_KEY or set wandb.enable=false"))


def _check_anchor_file(spec: BaseModel, errors: list[SpecIssue]) -> None:
    bank = spec.model.head.instance_bank  # type: ignore[attr-defined]
    path = bank.anchor
    key = "model.head.instance_bank.anchor"
    if not path:
        errors.append(MissingFileIssue(key, "is empty", "set it to <dataset_convert results>/anchor_init.npy (run dataset_convert first)"))
        return
    if path == MISSING or is_remote(path):
        return
    if not Path(path).is_file():
        errors.append(MissingFileIssue(key, f"{path} does not exist", "run dataset_convert first; it writes anchor_init.npy"))
        return
    import numpy as np

    try:
        anchors = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        errors.append(SpecIssue(key, f"{path} is not a readable .npy array ({type(exc).__name__})", "use the anchor_init.npy written by dataset_convert"))
        return
    if anchors.ndim != 2 or anchors.shape[1] != ANCHOR_VALUES:
        errors.append(SpecIssue(key, f"{path} has shape {anchors.shape}, expected (N, {ANCHOR_VALUES})", "use the anchor_init.npy written by dataset_convert"))
    elif anchors.shape[0] < bank.num_anchor:
        errors.append(SpecIssue(key, f"{path} has {anchors.shape[0]} anchors but model.head.instance_bank.num_anchor is {bank.num_anchor}", f"lower num_anchor to {anchors.shape[0]} or rerun dataset_convert with aicity.anchor_init_config.num_anchor={bank.num_anchor}"))
    elif not np.issubdtype(anchors.dtype, np.floating) or not np.isfinite(anchors).all():
        errors.append(SpecIssue(key, f"{path} holds non-finite or non-float values", "rerun dataset_convert"))


ACTION_ANN_FILES = {
    "train": ("train_dataset", "val_dataset"),
    "evaluate": ("val_dataset",),
    "inference": ("test_dataset",),
    "quantize": ("val_dataset",),
    "export": (),
}


def _check_annotation_files(action: str, spec: BaseModel, errors: list[SpecIssue]) -> None:
    d = spec.dataset  # type: ignore[attr-defined]
    if d.data_root not in (MISSING, "") and not is_remote(d.data_root) and action in ("train", "evaluate", "inference", "quantize") and not Path(d.data_root).is_dir():
        errors.append(MissingFileIssue("dataset.data_root", f"folder {d.data_root} does not exist", "point it at the split folder, e.g. <aicity_root>/train"))
    for name in ACTION_ANN_FILES.get(action, ()):
        path = getattr(d, name).ann_file
        if path in (MISSING, "") or is_remote(path):
            continue
        p = Path(path)
        if p.is_dir():  # a split folder: the dataset reads every converted scene in it
            if not any(p.glob("*_infos_*.pkl")):
                errors.append(MissingFileIssue(f"dataset.{name}.ann_file", f"folder {path} holds no *_infos_*.pkl", "point it at a dataset_convert split folder or one pickle"))
        elif not p.is_file():
            errors.append(MissingFileIssue(f"dataset.{name}.ann_file", f"{path} does not exist", "use a pickle written by dataset_convert (<results>/<split>/<scene>_infos_<split>.pkl) or its split folder"))


def _check_action_section(action: str, spec: BaseModel, errors: list[SpecIssue], warnings: list[SpecIssue], check_files: bool) -> None:
    section = getattr(spec, action, None)
    if section is None:
        return
    if action in ("evaluate", "inference"):
        if section.trt_engine:
            errors.append(SpecIssue(f"{action}.trt_engine", "TensorRT engines are not supported by this package", f"leave it empty and set {action}.checkpoint"))
        _check_file(f"{action}.checkpoint", section.checkpoint, errors, check_files)
    if action == "export":
        if section.batch_size > 1:
            errors.append(SpecIssue("export.batch_size", f"{section.batch_size}: batch > 1 is not exported", "the temporal state is per sequence: use -1 or 1 and run sequences separately"))
        if section.format != "onnx":
            errors.append(SpecIssue("export.format", f"{section.format!r} is not supported", "use onnx"))
        if section.input_channel != 3:
            errors.append(SpecIssue("export.input_channel", "only 3-channel RGB input is supported", None))
        _check_file("export.checkpoint", section.checkpoint, errors, check_files)
    if action == "quantize":
        if section.backend != "torchao":
            errors.append(SpecIssue("quantize.backend", f"{section.backend!r} is not supported", "use torchao"))
        if section.mode == "static_ptq" and not spec.dataset.quant_calibration_dataset.images_dir:  # type: ignore[attr-defined]
            errors.append(SpecIssue("dataset.quant_calibration_dataset.images_dir", "static_ptq needs calibration images", "set it or use quantize.mode=weight_only_ptq"))
        if check_files and not section.model_path:
            errors.append(MissingFileIssue("quantize.model_path", "is empty", "set it to the trained checkpoint (.pth), or launch with --parent-job-id"))
        _check_file("quantize.model_path", section.model_path, errors, check_files)


def _check_file(key: str, path: str, errors: list[SpecIssue], check_files: bool) -> None:
    if check_files and path not in ("", MISSING) and not is_remote(path) and not Path(path).exists():
        errors.append(MissingFileIssue(key, f"{path} does not exist", None))


def exit_code_for(report: SpecReport) -> int:
    """0 valid, 4 when every error is a missing file, else 3."""
    if report.valid:
        return 0
    return 4 if all(isinstance(e, MissingFileIssue) for e in report.errors) else 3
