"""Tiny synthetic AICity data, converted once per session, and tiny train/evaluate/inference specs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparse4d.config import validate_spec
from sparse4d.config.convert import AICityConfig
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.synth import make_synthetic_dataset
from sparse4d.engine.small_config import small_overrides

NUM_ANCHOR = 16
FRAMES = 8


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = make_synthetic_dataset(tmp_path_factory.mktemp("aicity"), scenes=1, cameras=2, frames=FRAMES, size=(128, 64), seed=3,
                                  splits=("train", "val"))
    out = tmp_path_factory.mktemp("converted")
    files = {}
    for split in ("train", "val"):
        config = AICityConfig.model_validate({"root": str(root), "split": split, "anchor_init_config": {"num_anchor": NUM_ANCHOR}})
        summary = run_dataset_convert(config, out)
        files[split] = summary.annotation_files[0]
    return {"root": root, "out": out, "train": files["train"], "val": files["val"], "anchor": out / "anchor_init.npy"}


def tiny_overrides(converted: dict[str, Path], results_dir: Path, **extra: Any) -> dict[str, Any]:
    values = small_overrides(width=128, height=64, cameras=2, num_anchor=NUM_ANCHOR)
    values.update({
        "results_dir": str(results_dir),
        "model.embed_dims": 32,
        "model.neck.out_channels": 32, "model.depth_branch.embed_dims": 32, "model.head.embed_dims": 32,
        "model.head.instance_bank.embed_dims": 32, "model.head.deformable_model.embed_dims": 32,
        "model.head.deformable_model.kps_generator.embed_dims": 32, "model.head.refine_layer.embed_dims": 32,
        "model.head.norm_layer.normalized_shape": 32, "model.head.ffn.pre_norm.normalized_shape": 32, "model.head.ffn.embed_dims": 32,
        "model.head.graph_model.embed_dims": 64, "model.head.temp_graph_model.embed_dims": 64, "model.head.ffn.in_channels": 64,
        "model.head.ffn.feedforward_channels": 64, "model.head.anchor_encoder.embed_dims": [16, 4, 4, 8],
        "model.head.num_decoder": 2,
        "model.head.operation_order": ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"],
        "model.head.instance_bank.anchor": str(converted["anchor"]),
        "dataset.data_root": str(converted["root"] / "train"),
        "dataset.train_dataset.ann_file": str(converted["train"]),
        "dataset.val_dataset.ann_file": str(converted["val"]),
        "dataset.test_dataset.ann_file": str(converted["val"]),
        "dataset.sequences.split_num": 4,
        "dataset.train_dataset.sequences_split_num": 4,
        "train.num_epochs": 2, "train.checkpoint_interval": 1, "train.validation_interval": 1,
        "train.optim.lr_scheduler.warmup_iters": 3,
    })
    values.update(extra)
    return values


def make_spec(action: str, overrides: dict[str, Any]) -> Any:
    report = validate_spec(action, {}, overrides=overrides)
    if not report.valid:
        raise AssertionError("; ".join(f"{e.key}: {e.message}" for e in report.errors))
    spec = report.spec
    Path(spec.results_dir).mkdir(parents=True, exist_ok=True)
    return spec


@pytest.fixture(scope="session")
def trained(converted, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("train")
    from sparse4d.engine.train import run_train

    run_train(make_spec("train", tiny_overrides(converted, results, **{"dataset.batch_size": 2})))
    return results
