"""The smallest Sparse4D setup that trains for real, run as `python -m sparse4d.cli.trainer` subprocesses.

One camera, 64x32 input, 8 anchors, 2 decoder layers, 32-dim features, a 6-frame synthetic scene and a
checkpoint after every optimizer step: a run is a handful of seconds, most of it interpreter start-up,
so the fault-injection tests can kill and resume it many times.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sparse4d.config.convert import AICityConfig
from sparse4d.config.loading import apply_overrides
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.synth import make_synthetic_dataset
from sparse4d.engine.small_config import small_overrides

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 6
NUM_ANCHOR = 8
EMBED = 32


def make_converted(folder: Path) -> dict[str, Path]:
    """A 6-frame, 1-camera synthetic scene converted to OVPKL + anchors (train split, reused for val/test)."""
    root = make_synthetic_dataset(folder / "aicity", scenes=1, cameras=1, frames=FRAMES, size=(128, 64), seed=7, splits=("train",))
    config = AICityConfig.model_validate({"root": str(root), "split": "train", "anchor_init_config": {"num_anchor": NUM_ANCHOR}})
    summary = run_dataset_convert(config, folder / "converted")
    return {"root": root, "ann": summary.annotation_files[0], "anchor": folder / "converted" / "anchor_init.npy"}


def tiny_train_overrides(converted: dict[str, Path], results_dir: Path, **extra: Any) -> dict[str, Any]:
    """Dotted keys for a 2-epoch run that writes a checkpoint after every step."""
    values = small_overrides(width=64, height=32, cameras=1, num_anchor=NUM_ANCHOR)
    values.update({
        "results_dir": str(results_dir),
        "model.embed_dims": EMBED, "model.neck.out_channels": EMBED, "model.depth_branch.embed_dims": EMBED,
        "model.head.embed_dims": EMBED, "model.head.instance_bank.embed_dims": EMBED,
        "model.head.deformable_model.embed_dims": EMBED, "model.head.deformable_model.kps_generator.embed_dims": EMBED,
        "model.head.refine_layer.embed_dims": EMBED, "model.head.norm_layer.normalized_shape": EMBED,
        "model.head.ffn.pre_norm.normalized_shape": EMBED, "model.head.ffn.embed_dims": EMBED,
        "model.head.graph_model.embed_dims": 2 * EMBED, "model.head.temp_graph_model.embed_dims": 2 * EMBED,
        "model.head.ffn.in_channels": 2 * EMBED, "model.head.ffn.feedforward_channels": 2 * EMBED,
        "model.head.anchor_encoder.embed_dims": [16, 4, 4, 8],
        "model.head.num_decoder": 2,
        "model.head.operation_order": ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"],
        "model.head.instance_bank.anchor": str(converted["anchor"]),
        "model.head.sampler.max_dn_gt": 8,
        "dataset.data_root": str(converted["root"] / "train"),
        "dataset.train_dataset.ann_file": str(converted["ann"]),
        "dataset.val_dataset.ann_file": str(converted["ann"]),
        "dataset.test_dataset.ann_file": str(converted["ann"]),
        "dataset.sequences.split_num": 2,
        "dataset.train_dataset.sequences_split_num": 2,
        "train.num_epochs": 2,
        "train.checkpoint_interval_unit": "step",
        "train.checkpoint_interval": 1,
        "train.validation_interval": 2,
        "train.seed": 11,
        "train.optim.lr_scheduler.warmup_iters": 2,
    })
    values.update(extra)
    return values


def write_spec(path: Path, overrides: dict[str, Any]) -> Path:
    """A spec YAML holding exactly these dotted keys (everything else takes the schema defaults)."""
    path.write_text(yaml.safe_dump(apply_overrides({}, overrides), sort_keys=False))
    return path


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a trainer subprocess: this checkout importable, one thread (two run side by side)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("SPARSE4D_STATUS_FILE", None)
    env.update(extra)
    return env


def trainer_command(action: str, spec: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "sparse4d.cli.trainer", action, "-e", str(spec), *overrides]


def run_trainer(action: str, spec: Path, *overrides: str, env: dict[str, str] | None = None,
                timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(trainer_command(action, spec, *overrides), capture_output=True, text=True, cwd=spec.parent,
                          env=env or child_env(), timeout=timeout)
