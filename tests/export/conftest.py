"""Tiny synthetic data, a tiny model spec, and an untrained checkpoint in the engine's format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sparse4d.config import validate_spec
from sparse4d.config.convert import AICityConfig
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.synth import make_synthetic_dataset
from sparse4d.engine.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, spec_as_plain_dict
from sparse4d.engine.small_config import small_overrides

NUM_ANCHOR = 16
WIDTH, HEIGHT = 128, 64
TINY_EMBED = 32


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = make_synthetic_dataset(tmp_path_factory.mktemp("aicity"), scenes=1, cameras=2, frames=4, size=(WIDTH, HEIGHT), seed=5,
                                  splits=("train", "val"))
    out = tmp_path_factory.mktemp("converted")
    files = {}
    for split in ("train", "val"):
        config = AICityConfig.model_validate({"root": str(root), "split": split, "anchor_init_config": {"num_anchor": NUM_ANCHOR}})
        files[split] = run_dataset_convert(config, out).annotation_files[0]
    return {"root": root, "train": files["train"], "val": files["val"], "anchor": out / "anchor_init.npy"}


def tiny_model_overrides(*, embed: int = TINY_EMBED, cameras: int = 2, num_anchor: int = NUM_ANCHOR, num_temp: int | None = None,
                         width: int = WIDTH, height: int = HEIGHT, max_num_cams: int = 20) -> dict[str, Any]:
    """The small config (ResNet-18) with tiny embeddings, 2 decoders and the given camera/instance counts."""
    values = small_overrides(width=width, height=height, cameras=cameras, num_anchor=num_anchor)
    e = embed
    values.update({
        "model.embed_dims": e, "model.neck.out_channels": e, "model.depth_branch.embed_dims": e, "model.head.embed_dims": e,
        "model.head.instance_bank.embed_dims": e, "model.head.deformable_model.embed_dims": e,
        "model.head.deformable_model.kps_generator.embed_dims": e, "model.head.refine_layer.embed_dims": e,
        "model.head.norm_layer.normalized_shape": e, "model.head.ffn.pre_norm.normalized_shape": e, "model.head.ffn.embed_dims": e,
        "model.head.graph_model.embed_dims": 2 * e, "model.head.temp_graph_model.embed_dims": 2 * e, "model.head.ffn.in_channels": 2 * e,
        "model.head.ffn.feedforward_channels": 2 * e, "model.head.anchor_encoder.embed_dims": [e // 2, e // 8, e // 8, e // 4],
        "model.head.num_decoder": 2, "model.head.num_output": min(num_anchor, 30),
        "model.head.operation_order": ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"],
        "model.head.instance_bank.num_temp_instances": num_anchor // 2 if num_temp is None else num_temp,
        "model.head.deformable_model.max_num_cams": max_num_cams,
    })
    return values


def data_overrides(converted: dict[str, Path], results_dir: Path) -> dict[str, Any]:
    return {
        "results_dir": str(results_dir),
        "model.head.instance_bank.anchor": str(converted["anchor"]),
        "dataset.data_root": str(converted["root"] / "train"),
        "dataset.train_dataset.ann_file": str(converted["train"]),
        "dataset.val_dataset.ann_file": str(converted["val"]),
        "dataset.test_dataset.ann_file": str(converted["val"]),
    }


def make_spec(action: str, overrides: dict[str, Any]) -> Any:
    report = validate_spec(action, {}, overrides=overrides)
    if not report.valid:
        raise AssertionError("; ".join(f"{e.key}: {e.message}" for e in report.errors))
    Path(report.spec.results_dir).mkdir(parents=True, exist_ok=True)
    return report.spec


def perturb_head(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Untrained heads have zero attention logits and a -4.6 class prior; noise makes scores distinct."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("head.") and name != "head.instance_bank.anchor":
                param.add_(torch.randn(param.shape, generator=g) * scale)


def write_checkpoint(model: torch.nn.Module, train_spec: Any, path: Path) -> Path:
    """A checkpoint shaped like `sparse4d train` writes (no optimizer needed for export/quantize)."""
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "epoch": 0, "global_step": 0, "batches_in_epoch": 0, "spec": spec_as_plain_dict(train_spec),
               "classes": [str(c) for c in train_spec.dataset.classes], "metrics": {}}
    atomic_torch_save(payload, path)
    return path


def build_checkpoint(tmp_path: Path, converted: dict[str, Path], *, seed: int = 0, anchors: Any = None,
                     **model_kwargs: Any) -> tuple[Path, Any, Any]:
    """(checkpoint path, train spec, model) for an untrained, head-perturbed tiny model."""
    from sparse4d.model.sparse4d import Sparse4D

    overrides = tiny_model_overrides(**model_kwargs)
    overrides["results_dir"] = str(tmp_path / "train")
    overrides.update(data_overrides(converted, tmp_path / "train"))
    if anchors is not None:  # more anchors than the converted data's file holds
        import numpy as np

        np.save(tmp_path / "anchors.npy", np.asarray(anchors, np.float32))
        overrides["model.head.instance_bank.anchor"] = str(tmp_path / "anchors.npy")
    spec = make_spec("train", overrides)
    torch.manual_seed(seed)
    model = Sparse4D.from_config(spec.model, len(spec.dataset.classes)).eval()
    perturb_head(model, seed)
    return write_checkpoint(model, spec, tmp_path / "model_epoch_000_step_00000.pth"), spec, model
