"""The OVPKL dataset: frames of converted AICity scenes as model-ready samples.

A sample is one frame of one camera group: images of all cameras (augmented uint8, with the mean/std
the model normalises them with on its device), their
projection matrices, depth targets from the H5 files (warped with the image and pooled to
`depth_stride`, `sparse4d.data.depth_targets`) and the ground truth. Scenes are cut into
sequences here (`sequences`), because the first-frame flag and the per-sequence augmentation both
depend on them; `sparse4d.data.sampler` streams those sequences into batches.

Items can be fetched by plain index or by the `SampleKey` the sampler yields (index, first_frame,
aug_seed): workers of a DataLoader hold separate copies of the dataset, so everything that must agree
across a sequence travels in the key instead of living in shared state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from sparse4d.data.augment import (
    affine_to_projection, image_affine, rotate_boxes, rotation_about_z, sample_aug_params, warp_image)
from sparse4d.data.depth_targets import depth_targets
from sparse4d.data.safe_pickle import safe_load
from sparse4d.errors import DataError, InputFileError, SpecError

DEPTH_DTYPE = np.uint16  # millimetres


class SampleKey(NamedTuple):
    index: int
    first_frame: bool
    aug_seed: tuple[int, ...]


@dataclass(frozen=True)
class SequenceSpan:
    """Frames [start, stop) of the dataset, consecutive in time within one scene group."""

    scene: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def annotation_files(ann_file: Path | str | Sequence[Path | str]) -> list[Path]:
    """One pickle, a list of them, or a folder holding `*_infos_*.pkl` files."""
    if isinstance(ann_file, (str, os.PathLike)):
        path = Path(ann_file)
        if path.is_dir():
            files = sorted(path.glob("*_infos_*.pkl"))
            if not files:
                raise InputFileError(f"{path} holds no *_infos_*.pkl annotation files", key="ann_file",
                                     hint="run `sparse4d dataset_convert` first")
            return files
        return [path]
    return [Path(item) for item in ann_file]


def load_infos(files: list[Path]) -> list[dict]:
    infos = []
    for path in files:
        payload = safe_load(path)
        if not isinstance(payload, dict) or not isinstance(payload.get("infos"), list):
            raise DataError(f"{path}: not an OVPKL annotation file (expected a dict with an 'infos' list)")
        infos.extend(sorted(payload["infos"], key=lambda info: info["frame_index"]))
    if not infos:
        raise DataError(f"no frames in {', '.join(map(str, files))}")
    return infos


def check_classes(infos: list[dict], classes: Sequence[str], source: str) -> None:
    """The classes of the spec and of the converted data must be the same set (else training sees 0 boxes)."""
    in_data = sorted({name for info in infos if info.get("has_gt") for name in info.get("gt_names", [])})
    if not any(info.get("has_gt") for info in infos):
        return
    unlisted = [name for name in in_data if name not in classes]
    absent = [name for name in classes if name not in in_data]
    if unlisted or absent:
        raise DataError(
            f"dataset.classes {list(classes)} do not match the classes in {source}: {in_data}"
            + (f"; in data but not listed: {unlisted}" if unlisted else "")
            + (f"; listed but never present: {absent}" if absent else ""),
            key="dataset.classes",
            hint="list the converted (MAP_CLASS_NAMES) names, or convert with a matching aicity.class_config",
        )


def cut_sequences(infos: list[dict], split_num: int | None) -> list[SequenceSpan]:
    """Cut each scene group into sequences of at most `split_num` frames (None: whole scene groups).

    A group of n frames becomes ceil(n / split_num) consecutive sequences whose lengths differ by at
    most one, so n need not be a multiple of split_num.
    """
    spans, start = [], 0
    while start < len(infos):
        stop = start
        while stop < len(infos) and infos[stop]["sequence_id"] == infos[start]["sequence_id"]:
            stop += 1
        pieces = 1 if not split_num else -(-(stop - start) // int(split_num))
        for chunk in np.array_split(np.arange(start, stop), pieces):
            spans.append(SequenceSpan(infos[start]["scene"], int(chunk[0]), int(chunk[-1]) + 1))
        start = stop
    return spans


class OVPKLDataset(Dataset):
    """Frames of converted AICity scene groups (see module docstring)."""

    def __init__(self, ann_file: Path | str | Sequence[Path | str], *, data_root: Path | str, classes: Sequence[str],
                 augmentation: Any, normalize: Any, input_hw: tuple[int, int] | None = None, test_mode: bool = False,
                 use_valid_flag: bool = True, with_depth: bool = True, sequences_split_num: int | None = None,
                 keep_consistent_aug: bool = True, seed: int = 0, depth_stride: int = 1) -> None:
        self.files = annotation_files(ann_file)
        self.data_root = Path(data_root)
        self.classes = [str(name) for name in classes]
        self.augmentation = augmentation
        final_dim = tuple(int(v) for v in augmentation.final_dim)
        if input_hw is not None and tuple(input_hw) != final_dim:
            raise SpecError(f"model input size (H, W) {tuple(input_hw)} differs from final_dim {list(final_dim)}",
                            key="dataset.augmentation.final_dim", hint="make them equal")
        self.input_hw: tuple[int, int] = final_dim  # (H, W)
        self.reference_width = float(augmentation.image_size[1])
        self.mean = np.asarray(normalize.mean, dtype=np.float32)
        self.std = np.asarray(normalize.std, dtype=np.float32)
        self.to_rgb = bool(normalize.to_rgb)  # False: the model expects BGR channel order
        self.test_mode = test_mode
        self.use_valid_flag = use_valid_flag
        self.with_depth = with_depth
        self.depth_stride = max(int(depth_stride), 1)
        self.keep_consistent_aug = keep_consistent_aug
        self.seed = seed
        self.epoch = 0
        self.infos = load_infos(self.files)
        check_classes(self.infos, self.classes, ", ".join(map(str, self.files)))
        self.sequences = cut_sequences(self.infos, sequences_split_num)
        self._sequence_of = np.empty(len(self.infos), dtype=np.int64)
        for number, span in enumerate(self.sequences):
            self._sequence_of[span.start:span.stop] = number
        self._h5_handles: dict[str, h5py.File] = {}
        self._h5_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def depth_hw(self) -> tuple[int, int]:
        """(H, W) of the depth targets: the input size divided by `depth_stride`, rounded up."""
        return tuple(-(-size // self.depth_stride) for size in self.input_hw)  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def default_key(self, index: int) -> SampleKey:
        """Key for a plain index: first frame of its sequence flagged, augmentation per sequence."""
        sequence = int(self._sequence_of[index])
        unit = sequence if self.keep_consistent_aug else index
        return SampleKey(index, self.sequences[sequence].start == index, (self.seed, self.epoch, unit))

    def __getitem__(self, key: int | SampleKey | tuple) -> dict[str, Any]:
        if isinstance(key, (int, np.integer)):
            key = self.default_key(int(key))
        index, first_frame, aug_seed = key
        info = self.infos[index]
        if self.test_mode:
            params = sample_aug_params(self.augmentation, None)
        else:
            seed = aug_seed if self.keep_consistent_aug else (*aug_seed, index)
            params = sample_aug_params(self.augmentation, np.random.default_rng(list(seed)))
        world_rotation = rotation_about_z(params.rotate3d_rad)
        images, depths, projections = [], [], []
        for camera in range(len(info["camera_names"])):
            raw_rgb = self._read_rgb(info["image_paths"][camera])
            raw_h, raw_w = raw_rgb.shape[:2]
            affine = image_affine(params, (raw_w, raw_h), self.reference_width, self.input_hw)
            images.append(warp_image(raw_rgb, affine, self.input_hw))
            if self.with_depth:  # a camera without a depth map: unknown everywhere
                depth_mm = self._read_depth(info["depth_refs"][camera], (raw_h, raw_w))
                depths.append(depth_targets(depth_mm, affine, self.input_hw, self.depth_stride) if depth_mm is not None
                              else np.zeros(self.depth_hw, dtype=np.float32))
            projection = (affine_to_projection(affine) @ info["camera_to_image"][camera] @ info["world_to_camera"][camera]
                          @ np.linalg.inv(world_rotation))
            projections.append(projection)
        boxes, labels, ids = self._ground_truth(info, params.rotate3d_rad)
        height, width = self.input_hw
        sample = {
            "img": torch.from_numpy(self._model_channels(np.stack(images))),
            "img_mean": torch.from_numpy(self.mean.copy()),
            "img_std": torch.from_numpy(self.std.copy()),
            "projection_mat": torch.from_numpy(np.stack(projections).astype(np.float32)),
            "image_wh": torch.tensor([[width, height]] * len(images), dtype=torch.float32),
            "timestamp": float(info["timestamp"]),
            "first_frame": bool(first_frame),
            "gt_bboxes_3d": torch.from_numpy(boxes),
            "gt_labels_3d": torch.from_numpy(labels),
            "instance_ids": torch.from_numpy(ids),
            "sample_token": str(info["token"]),
            "scene": str(info["scene"]),
        }
        if self.with_depth:  # only training with a depth loss reads them (evaluation would carry zeros)
            sample["gt_depth"] = torch.from_numpy(np.stack(depths))
        return sample

    def _ground_truth(self, info: dict, rotate3d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not info.get("has_gt"):
            return np.zeros((0, 10), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        keep = np.asarray(info["valid_flag"], dtype=bool) if self.use_valid_flag else np.ones(len(info["gt_names"]), bool)
        keep &= np.array([name in self.classes for name in info["gt_names"]], dtype=bool).reshape(keep.shape)
        boxes = rotate_boxes(np.asarray(info["gt_boxes"], dtype=np.float32)[keep], rotate3d).astype(np.float32)
        labels = np.array([self.classes.index(name) for name, kept in zip(info["gt_names"], keep) if kept], dtype=np.int64)
        ids = np.asarray(info["gt_instance_ids"], dtype=np.int64)[keep]
        return np.ascontiguousarray(boxes), labels, ids

    def _model_channels(self, rgb: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) uint8 in the channel order the model wants. The model
        normalises with `mean`/`std` (same channel order) on its device (`batch.normalized_images`):
        normalising here cost a worker about 87 ms per default-size sample and four times the bytes."""
        pixels = rgb if self.to_rgb else rgb[..., ::-1]
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

    @staticmethod
    def _read_rgb(path: str) -> np.ndarray:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputFileError(f"image {path} is missing or unreadable",
                                 hint="re-run `sparse4d dataset_convert` to re-extract the frames")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes BGR; the model wants RGB

    def _read_depth(self, ref: tuple[str, str] | None, raw_hw: tuple[int, int]) -> np.ndarray | None:
        """The camera's raw depth map, uint16 millimetres (0 = unknown), or None without one."""
        if ref is None:
            return None
        relative, key = ref
        handle = self._h5(relative)
        if key not in handle:
            raise DataError(f"{self.data_root / relative}: no depth dataset '{key}'")
        dataset = handle[key]
        if dataset.dtype != DEPTH_DTYPE:
            raise DataError(f"{self.data_root / relative}:{key} has dtype {dataset.dtype}, expected uint16 millimetres",
                            hint="depth maps must be uint16 mm as in AICity 2025")
        depth = dataset[()]
        if depth.shape != raw_hw:
            raise DataError(f"{self.data_root / relative}:{key} is {depth.shape[1]}x{depth.shape[0]} but the image is "
                            f"{raw_hw[1]}x{raw_hw[0]}")
        return depth

    def _h5(self, relative: str) -> h5py.File:
        if self._h5_pid != os.getpid():  # forked worker: never share HDF5 handles across processes
            self._h5_handles, self._h5_pid = {}, os.getpid()
        handle = self._h5_handles.get(relative)
        if handle is None:
            path = self.data_root / relative
            if not path.is_file():
                raise InputFileError(f"depth file {path} does not exist", key="dataset.data_root",
                                     hint="data_root must be the split folder the annotations were converted from")
            handle = self._h5_handles[relative] = h5py.File(path, "r")
        return handle

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5_handles"] = {}
        return state
