"""Shared synthetic data for the data-layer tests: generated once per session, converted per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparse4d.config.convert import AICityConfig
from sparse4d.config.dataset import AugmentationConfig, NormalizeConfig
from sparse4d.data.synth import make_synthetic_dataset

CLASSES = ["person", "gr1_t2", "agility_digit", "nova_carter"]
FRAMES = 20


@pytest.fixture(scope="session")
def pristine_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aicity")
    return make_synthetic_dataset(root, scenes=1, cameras=2, frames=FRAMES, size=(256, 128), seed=0,
                                  splits=("train", "test"))


@pytest.fixture()
def aicity_root(pristine_root: Path, tmp_path: Path) -> Path:
    """A private copy tests may make untidy."""
    root = tmp_path / "aicity"
    shutil.copytree(pristine_root, root)
    return root


def aicity_config(root: Path, **overrides) -> AICityConfig:
    anchors = {"num_anchor": 16, **overrides.pop("anchor_init_config", {})}
    return AICityConfig.model_validate({"root": str(root), "split": "train", "anchor_init_config": anchors, **overrides})


def augmentation(**overrides) -> AugmentationConfig:
    values = {"resize_lim": [1.0, 1.0], "final_dim": [128, 256], "bot_pct_lim": [0.0, 0.0], "rot_lim": [0.0, 0.0],
              "image_size": [128, 256], "rand_flip": False, "rot3d_range": [0.0, 0.0], **overrides}
    return AugmentationConfig.model_validate(values)


def identity_normalize() -> NormalizeConfig:
    return NormalizeConfig.model_validate({"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "to_rgb": True})
