"""`dataset_convert` spec: AICity scenes to OVPKL annotation pickles plus `anchor_init.npy`.

TAO's converter spec also carries sections for other converters (coco, kitti, odvg); they are accepted
so TAO spec files validate, but only AICity -> OVPKL is implemented here.
"""
from __future__ import annotations

from typing import Literal

from .fields import AUTOML_OFF, Section, field, section

MISSING = "???"

AICITY_CLASSES = ["Person", "FourierGR1T2", "AgilityDigit", "NovaCarter"]
# Converted GT names are the trainer's class names, so dataset.classes matches by default.
AICITY_NAME_MAP = {
    "Person": "person",
    "FourierGR1T2": "gr1_t2",
    "AgilityDigit": "agility_digit",
    "NovaCarter": "nova_carter",
    "Transporter": "transporter",
    "Forklift": "forklift",
}


class ClassConfig(Section):
    CLASS_LIST: list[str] = field(AICITY_CLASSES, "AICity object types to keep (others are skipped and counted).", min_length=1)
    MAP_CLASS_NAMES: dict[str, str] = field(AICITY_NAME_MAP, "AICity object type -> class name written to the annotations.")
    ATTRIBUTE_DICT: dict[str, str] = field(
        {"Person": "person.moving", "FourierGR1T2": "fourier_gr1_t2.moving", "AgilityDigit": "agility_digit.moving", "NovaCarter": "nova_carter.moving"},
        "AICity object type -> attribute name.",
    )
    CLASS_RANGE_DICT: dict[str, float] = field(
        {"Person": 40, "FourierGR1T2": 40, "AgilityDigit": 40, "NovaCarter": 40},
        "Evaluation range (m from the scene centre) per AICity object type.",
    )
    SUB_CLASS_DICT: dict[str, str] | None = field(None, "Optional AICity sub-type -> type mapping.")


class AnchorInitConfig(Section):
    num_anchor: int = field(900, "Anchors to fit by k-means over GT boxes.", ge=1)
    detection_range: float = field(-1.0, "Keep GT within this range (m) for anchors (-1: all).")
    sample_ratio: int = field(-1, "Use every Nth frame for anchors (-1: all frames).")
    output_file_name: str = field("anchor_init.npy", "Anchor file name inside results_dir.")


class AICityConfig(Section):
    root: str = field(MISSING, "AICity root holding split folders (<root>/<split>/<scene>/...).")
    split: str = field("train", "Split folder to convert (train, val, test, ...).")
    version: Literal["2025"] = field("2025", "AICity layout version.")
    num_frames: int = field(9000, "Frames per scene to convert (fewer are used when a scene is shorter).", ge=1)
    camera_grouping_mode: Literal["random", "sequential", "all"] = field("random", "How cameras of a scene are grouped into BEV groups.")
    depth_format: Literal["h5"] = field("h5", "Depth map format.")
    rgb_format: Literal["mp4"] = field("mp4", "RGB video format.")
    recentering: bool = field(True, "Move the scene centre to the origin.")
    class_config: ClassConfig = section(ClassConfig, "Classes.", automl=AUTOML_OFF)
    anchor_init_config: AnchorInitConfig = section(AnchorInitConfig, "Anchor initialisation.", automl=AUTOML_OFF)


class CocoConfig(Section):
    ann_file: str = field("<specify path to annotation file>", "COCO converter input (not used by Sparse4D).")
    refine_box: bool = field(False, "COCO converter option (not used).")
    use_all_categories: bool = field(False, "COCO converter option (not used).")
    add_background: bool = field(False, "COCO converter option (not used).")


class KittiConfig(Section):
    image_dir: str = field("<specify image directory>", "KITTI converter input (not used by Sparse4D).")
    label_dir: str = field("<specify labels directory>", "KITTI converter input (not used).")
    project: str = field("annotations", "KITTI converter option (not used).")
    mapping: str = field("", "KITTI converter option (not used).")
    no_skip: bool = field(False, "KITTI converter option (not used).")
    preserve_hierarchy: bool = field(False, "KITTI converter option (not used).")


class OdvgConfig(Section):
    ann_file: str = field("<specify path to annotation file>", "ODVG converter input (not used by Sparse4D).")
    labelmap_file: str = field("<specify path to labelmap file>", "ODVG converter input (not used).")


class DataFormatConfig(Section):
    input_format: Literal["AICITY"] = field("AICITY", "Input format.")
    output_format: Literal["OVPKL"] = field("OVPKL", "Output format.")
