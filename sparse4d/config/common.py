"""Sections shared by several actions: Weights & Biases logging and visualisation."""
from __future__ import annotations

from .fields import AUTOML_OFF, Section, field


class WandbConfig(Section):
    enable: bool = field(False, "Log to Weights & Biases (needs WANDB_API_KEY in the environment).")
    project: str = field("TAO Toolkit", "W&B project.")
    entity: str = field("", "W&B entity.")
    group: str = field("", "W&B group.")
    tags: list[str] = field(["tao-toolkit"], "W&B tags.", automl=AUTOML_OFF)
    reinit: bool = field(False, "Allow re-initialising a run in the same process.")
    sync_tensorboard: bool = field(False, "Sync TensorBoard logs to W&B.")
    save_code: bool = field(False, "Save code to W&B.")
    name: str = field("TAO Toolkit Training", "W&B run name.")
    run_id: str = field("", "W&B run id to resume.")


class VisualizeConfig(Section):
    show: bool = field(False, "Write pictures during evaluation as well as inference.")
    vis_dir: str = field("./vis", "Picture folder (relative paths are under results_dir).")
    vis_score_threshold: float = field(0.25, "Draw boxes scoring at least this.", ge=0.0, le=1.0)
    n_images_col: int = field(6, "Camera images per row in the picture grid.", ge=1)
    viz_down_sample: int = field(3, "Downsample camera images by this factor in pictures.", ge=1)
