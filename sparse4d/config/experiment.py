"""One top-level spec model per action; each holds only the sections that action reads.

TAO's spec files carry every section for every action (a train spec has `quantize:`, an evaluate spec
has `train:`). Those extra known sections are accepted and reported as ignored, so a TAO spec file
validates unchanged, but they are not part of the action's schema defaults or template.
"""
from __future__ import annotations

from typing import Any


from .actions import EvaluateConfig, ExportConfig, InferenceConfig, QuantizeConfig
from .common import VisualizeConfig, WandbConfig
from .convert import AICityConfig, CocoConfig, DataFormatConfig, KittiConfig, OdvgConfig
from .dataset import DatasetConfig
from .fields import AUTOML_OFF, Section, field, section
from .model import ModelConfig
from .train import TrainConfig

ACTIONS = ("dataset_convert", "train", "evaluate", "inference", "export", "quantize")


class _Experiment(Section):
    """Keys every trainer action shares."""

    model_name: str = field("", "Free-form model name.", automl=AUTOML_OFF)
    encryption_key: str = field("", "Key for encrypted checkpoints (pass via the SPARSE4D_ENCRYPTION_KEY env var, not the spec).", automl=AUTOML_OFF)
    results_dir: str = field("", "Folder for everything this action writes.", automl=AUTOML_OFF)
    model: ModelConfig = section(ModelConfig, "Network.")
    dataset: DatasetConfig = section(DatasetConfig, "Data.")


class TrainSpec(_Experiment):
    wandb: WandbConfig = section(WandbConfig, "Weights & Biases.", automl=AUTOML_OFF)
    train: TrainConfig = section(TrainConfig, "Training.")
    visualize: VisualizeConfig = section(VisualizeConfig, "Pictures.", automl=AUTOML_OFF)


class EvaluateSpec(_Experiment):
    evaluate: EvaluateConfig = section(EvaluateConfig, "Evaluation.", automl=AUTOML_OFF)
    visualize: VisualizeConfig = section(VisualizeConfig, "Pictures.", automl=AUTOML_OFF)


class InferenceSpec(_Experiment):
    inference: InferenceConfig = section(InferenceConfig, "Inference.", automl=AUTOML_OFF)
    visualize: VisualizeConfig = section(VisualizeConfig, "Pictures.", automl=AUTOML_OFF)


class ExportSpec(_Experiment):
    export: ExportConfig = section(ExportConfig, "ONNX export.", automl=AUTOML_OFF)


class QuantizeSpec(_Experiment):
    quantize: QuantizeConfig = section(QuantizeConfig, "Quantization.", automl=AUTOML_OFF)


class DatasetConvertSpec(Section):
    results_dir: str = field("", "Folder for the annotation pickles and anchor_init.npy.", automl=AUTOML_OFF)
    verbose: bool = field(False, "Verbose logs.")
    data: DataFormatConfig = section(DataFormatConfig, "Conversion formats.", automl=AUTOML_OFF)
    aicity: AICityConfig = section(AICityConfig, "AICity input.", automl=AUTOML_OFF)
    coco: CocoConfig = section(CocoConfig, "COCO converter (accepted for TAO compatibility).", automl=AUTOML_OFF)
    kitti: KittiConfig = section(KittiConfig, "KITTI converter (accepted for TAO compatibility).", automl=AUTOML_OFF)
    odvg: OdvgConfig = section(OdvgConfig, "ODVG converter (accepted for TAO compatibility).", automl=AUTOML_OFF)


SPEC_MODELS: dict[str, type[Section]] = {
    "dataset_convert": DatasetConvertSpec,
    "train": TrainSpec,
    "evaluate": EvaluateSpec,
    "inference": InferenceSpec,
    "export": ExportSpec,
    "quantize": QuantizeSpec,
}

# Top-level sections TAO writes into every action's spec; accepted and ignored where unused.
TAO_SHARED_SECTIONS = ("train", "evaluate", "inference", "export", "quantize", "wandb", "visualize", "model", "dataset", "model_name", "encryption_key")


def ignored_sections(action: str, spec: dict[str, Any]) -> list[str]:
    """Known TAO sections present in ``spec`` that ``action`` does not read."""
    fields = SPEC_MODELS[action].model_fields
    return sorted(k for k in spec if k not in fields and k in TAO_SHARED_SECTIONS)


