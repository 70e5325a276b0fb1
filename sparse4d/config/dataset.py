"""`dataset.*`: the converted OVPKL annotations, sequence sampling, augmentation and normalisation."""
from __future__ import annotations

from typing import Literal

from .fields import AUTOML_OFF, Automl, Section, field, section

MISSING = "???"


class AugmentationConfig(Section):
    resize_lim: list[float] = field([0.7, 0.77], "Random resize range (train).", min_length=2, max_length=2, automl=AUTOML_OFF)
    final_dim: list[int] = field([512, 1408], "Network input [height, width] after crop (must equal model.input_shape reversed).", min_length=2, max_length=2, automl=AUTOML_OFF)
    bot_pct_lim: list[float] = field([0.0, 0.0], "Fraction of the image bottom that may be cropped.", min_length=2, max_length=2, automl=AUTOML_OFF)
    rot_lim: list[float] = field([-5.4, 5.4], "Image rotation range in degrees (train).", min_length=2, max_length=2, automl=AUTOML_OFF)
    image_size: list[int] = field([1080, 1920], "Source image [height, width].", min_length=2, max_length=2, automl=AUTOML_OFF)
    rand_flip: bool = field(True, "Random horizontal flip (train).")
    rot3d_range: list[float] = field([-0.3925, 0.3925], "Random scene rotation about z in radians (train).", min_length=2, max_length=2, automl=AUTOML_OFF)


class NormalizeConfig(Section):
    mean: list[float] = field([123.675, 116.28, 103.53], "Per-channel mean (RGB, 0-255).", min_length=3, max_length=3, automl=AUTOML_OFF)
    std: list[float] = field([58.395, 57.12, 57.375], "Per-channel std (RGB, 0-255).", min_length=3, max_length=3, automl=AUTOML_OFF)
    to_rgb: bool = field(True, "Feed RGB channel order (images are decoded as BGR).")


class SequencesConfig(Section):
    split_num: int = field(100, "Frames per training sequence (scenes are cut into sequences of this length).", ge=1)
    keep_consistent_aug: bool = field(True, "Same augmentation for every frame of a sequence.")
    same_scene_in_batch: bool = field(True, "Batch slots stream sequences of one scene.")


class TrainDatasetConfig(Section):
    ann_file: str = field(MISSING, "Train annotation pickle from dataset_convert (<split>/<scene>_infos_train.pkl).")
    test_mode: bool = field(False, "Test mode (no GT, no augmentation).")
    use_valid_flag: bool = field(True, "Skip GT boxes not visible in any camera.")
    with_seq_flag: bool = field(True, "Cut scenes into sequences.")
    sequences_split_num: int = field(100, "Frames per training sequence.", ge=1)
    keep_consistent_seq_aug: bool = field(True, "Same augmentation within a sequence.")
    same_scene_in_batch: bool = field(True, "Batch slots stream sequences of one scene.")


class EvalDatasetConfig(Section):
    ann_file: str = field(MISSING, "Annotation pickle from dataset_convert.")
    test_mode: bool = field(False, "Test mode (no GT).")
    use_valid_flag: bool = field(True, "Skip GT boxes not visible in any camera.")
    tracking: bool = field(True, "Assign track ids during evaluation.")
    tracking_threshold: float = field(0.2, "Score needed to start a new track.", ge=0.0, le=1.0)
    same_scene_in_batch: bool = field(True, "Batch slots stream sequences of one scene.")


class TestDatasetConfig(EvalDatasetConfig):
    test_mode: bool = field(True, "Test mode (no GT).")


class CalibrationDatasetConfig(Section):
    images_dir: str = field("", "Images for quantization calibration (static_ptq).")


class DatasetConfig(Section):
    type: Literal["omniverse_3d_det_track"] = field("omniverse_3d_det_track", "Dataset type (OVPKL from dataset_convert).")
    batch_size: int = field(2, "Per-GPU batch size (parallel sequences).", ge=1, automl=Automl(valid_min=1, valid_max=8))
    use_h5_file_for_rgb: bool = field(False, "Read RGB from H5 (not supported: RGB comes from extracted frames).")
    use_h5_file_for_depth: bool = field(True, "Read depth targets from depth_maps/<camera>.h5.")
    num_frames: int = field(200, "Frames per scene used for training.", ge=1)
    num_bev_groups: int = field(1, "Camera groups (BEV groups) per scene.", ge=1)
    data_root: str = field(MISSING, "Split folder of the AICity root (e.g. <root>/train).")
    classes: list[str] = field(["person", "gr1_t2", "agility_digit", "nova_carter"], "Detection classes (names written by dataset_convert).", min_length=1, automl=AUTOML_OFF)
    num_workers: int = field(4, "Dataloader workers per GPU.", ge=0)
    num_ids: int = field(70, "Identities for re-ID.", ge=1)
    augmentation: AugmentationConfig = section(AugmentationConfig, "Augmentation.")
    normalize: NormalizeConfig = section(NormalizeConfig, "Normalisation.", automl=AUTOML_OFF)
    sequences: SequencesConfig = section(SequencesConfig, "Sequence sampling.", automl=AUTOML_OFF)
    train_dataset: TrainDatasetConfig = section(TrainDatasetConfig, "Train split.", automl=AUTOML_OFF)
    val_dataset: EvalDatasetConfig = section(EvalDatasetConfig, "Validation split.", automl=AUTOML_OFF)
    test_dataset: TestDatasetConfig = section(TestDatasetConfig, "Test split.", automl=AUTOML_OFF)
    quant_calibration_dataset: CalibrationDatasetConfig = section(CalibrationDatasetConfig, "Quantization calibration images.", automl=AUTOML_OFF)
