"""dataset_convert: AICity 2025 scenes -> OVPKL annotation pickles + anchor_init.npy.

Inputs: ``<aicity.root>/<aicity.split>/<Scene>/`` in the AICity layout (see sparse4d/data/synth.py).
Outputs under ``results_dir``:

- ``<split>/<scene>+bev-sensor-<mode>-<k>_infos_<split>.pkl``: one file per camera group. A scene's
  cameras (sorted by name) are split into ``ceil(cameras / MAX_CAMERAS_PER_GROUP)`` groups whose sizes
  differ by at most one; ``k`` is the group index. ``mode`` is ``aicity.camera_grouping_mode``:
  ``random`` shuffles the cameras first with a seed derived from the scene name (stable across runs),
  ``sequential`` keeps name order, ``all`` puts every camera in one group whatever their number. With up
  to 6 cameras there is one group, ``k = 0``, with all.
- ``<split>/frames/<scene>/<camera>/<frame:06d>.jpg``: frames extracted from the mp4 videos (the cache
  lives in results_dir so the dataset folder can stay read-only); a rerun reuses them.
- ``anchor_init_config.output_file_name`` (default ``anchor_init.npy``): seeded k-means anchors over
  the split's ground truth, written only for a training split (name starting with "train") that has
  ground truth, so converting val/test into the same results_dir never replaces the training anchors.

Each pickle holds ``{"metadata": {...}, "infos": [frame dict, ...]}`` made of plain containers and
numpy arrays only (see `FRAME_KEYS`). Writing is deterministic: same input, same bytes.
"""
from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sparse4d.data.aicity import (
    CameraCalibration, SceneObject, SkipCounter, assign_velocities, read_calibration, read_ground_truth)
from sparse4d.data.anchors import fit_anchors, save_anchors
from sparse4d.data.frames import extract_frames, frame_path
from sparse4d.data.safe_pickle import atomic_dump
from sparse4d.errors import DataError, InputFileError, SpecError
from sparse4d.jobs.fileio import remove_dead_temporaries

LOG = logging.getLogger(__name__)
MAX_CAMERAS_PER_GROUP = 6
GROUPING_MODES = ("random", "sequential", "all")
OVPKL_FORMAT = "sparse4d-ovpkl-1"
FRAME_KEYS = (
    "token", "scene", "group", "sequence_id", "frame_index", "timestamp", "world_offset", "camera_names",
    "image_paths", "depth_refs", "image_wh", "intrinsics", "world_to_camera", "camera_to_image", "world_to_image",
    "has_gt", "gt_boxes", "gt_names", "gt_instance_ids", "gt_velocity", "gt_visibility", "gt_boxes_2d", "valid_flag",
)


@dataclass
class ConvertSummary:
    split: str
    scenes: list[str] = field(default_factory=list)
    frames: int = 0
    annotation_files: list[Path] = field(default_factory=list)
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    anchor_file: Path | None = None
    frame_cache: Path | None = None

    def format(self) -> str:
        lines = [f"dataset_convert split '{self.split}': {len(self.scenes)} scene(s), {self.frames} frame(s), "
                 f"{len(self.annotation_files)} annotation file(s)"]
        lines.append("  boxes per class: " + (", ".join(f"{k}={v}" for k, v in self.boxes_per_class.items()) or "none"))
        for reason, count in self.skipped.items():
            lines.append(f"  skipped/flagged: {count} {reason}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append(f"  anchors: {self.anchor_file or 'not written (no ground truth)'}")
        return "\n".join(lines)


@dataclass
class _SceneData:
    name: str
    cameras: list[CameraCalibration]
    frame_count: int
    ground_truth: dict[int, list[SceneObject]] | None
    offset: np.ndarray
    fps: float


def run_dataset_convert(aicity: Any, results_dir: Path) -> ConvertSummary:
    """Convert the `aicity` section (root, split, num_frames, ...) into results_dir; see module doc."""
    results_dir = Path(results_dir)
    split = str(aicity.split)
    split_root = Path(str(aicity.root)) / split
    if not split_root.is_dir():
        raise InputFileError(f"split folder {split_root} does not exist", key="aicity.root",
                             hint="aicity.root must hold one folder per split (train/val/test)")
    _check_formats(aicity)
    mode = str(aicity.camera_grouping_mode)
    if mode not in GROUPING_MODES:
        raise SpecError(f"unknown camera grouping mode '{mode}'", key="aicity.camera_grouping_mode",
                        hint=f"use one of {', '.join(GROUPING_MODES)}")
    num_frames = int(aicity.num_frames)
    if num_frames <= 0:
        raise SpecError("must be positive", key="aicity.num_frames")
    class_config = aicity.class_config
    class_list = [str(name) for name in class_config.CLASS_LIST]
    name_map = {str(k): str(v) for k, v in (class_config.MAP_CLASS_NAMES or {}).items()}
    sub_classes = {str(k): str(v) for k, v in (class_config.SUB_CLASS_DICT or {}).items()}
    mapped_classes = [name_map.get(name, name) for name in class_list]
    if len(set(mapped_classes)) != len(mapped_classes):
        raise SpecError(f"CLASS_LIST maps to duplicate names {mapped_classes}", key="aicity.class_config.MAP_CLASS_NAMES")

    scene_dirs = sorted(path for path in split_root.iterdir() if (path / "calibration.json").is_file())
    if not scene_dirs:
        raise DataError(f"{split_root} holds no scene folders with a calibration.json")
    summary = ConvertSummary(split=split)
    skipped = SkipCounter()
    frame_cache = results_dir / split / "frames"
    # a killed conversion leaves temporaries (pickles, anchors, frames): a rerun removes them
    removed = remove_dead_temporaries(results_dir / split, recursive=True) + remove_dead_temporaries(results_dir)
    if removed:
        LOG.info("removed %d temporary file(s) left by a killed conversion", len(removed))
    summary.frame_cache = frame_cache

    scenes = [_read_scene(scene_dir, aicity, class_list, sub_classes, num_frames, skipped, summary.notes)
              for scene_dir in scene_dirs]
    anchors_config = aicity.anchor_init_config
    anchor_boxes, anchor_frames = _anchor_inputs(scenes, anchors_config, name_map)
    anchors = None
    if not split.lower().startswith("train"):
        anchor_boxes = None  # anchors come from training data; a val/test run must not overwrite them
        summary.notes.append(f"split '{split}': anchors are fitted only when converting a training split")
    if anchor_boxes is not None:  # checked before anything is written
        anchors = fit_anchors(anchor_boxes, int(anchors_config.num_anchor), frames=anchor_frames, split=split)

    boxes_per_class: Counter = Counter()
    for scene in scenes:
        usable = _extract_scene_frames(scene, split_root, frame_cache, num_frames, skipped, summary.notes)
        if not usable:
            continue
        summary.scenes.append(scene.name)
        summary.frames += scene.frame_count
        for group_index, group in enumerate(_camera_groups(scene, usable, mode)):
            geometry = _GroupGeometry(scene, group, frame_cache, split_root)
            infos = [_frame_info(scene, geometry, group_index, frame, name_map, boxes_per_class)
                     for frame in range(scene.frame_count)]
            payload = {"metadata": _metadata(aicity, scene, group, group_index, mode, mapped_classes, name_map,
                                             split_root, frame_cache), "infos": infos}
            target = results_dir / split / f"{scene.name}+bev-sensor-{mode}-{group_index}_infos_{split}.pkl"
            atomic_dump(payload, target)
            summary.annotation_files.append(target)
    if anchors is not None:
        summary.anchor_file = results_dir / str(anchors_config.output_file_name)
        save_anchors(anchors, summary.anchor_file)
    summary.boxes_per_class = {name: boxes_per_class[name] for name in mapped_classes}
    summary.skipped = dict(sorted(skipped.counts.items()))
    LOG.info("%s", summary.format())
    return summary


def _check_formats(aicity: Any) -> None:
    if str(aicity.rgb_format) != "mp4":
        raise SpecError(f"rgb_format '{aicity.rgb_format}' is not supported", key="aicity.rgb_format", hint="use mp4")
    if str(aicity.depth_format) != "h5":
        raise SpecError(f"depth_format '{aicity.depth_format}' is not supported", key="aicity.depth_format",
                        hint="use h5")


def _read_scene(scene_dir: Path, aicity: Any, class_list: list[str], sub_classes: dict[str, str], num_frames: int,
                skipped: SkipCounter, notes: list[str]) -> _SceneData:
    cameras = read_calibration(scene_dir)
    fps = cameras[0].fps
    ground_truth = read_ground_truth(scene_dir, classes=class_list, sub_classes=sub_classes, max_frames=num_frames,
                                     skipped=skipped)
    if ground_truth is None:
        notes.append(f"{scene_dir.name}: no ground_truth.json, infos carry no ground truth")
    else:
        assign_velocities(ground_truth, fps, scene_dir.name, skipped)
    offset = np.zeros(3)
    if bool(aicity.recentering):
        offset[:2] = np.mean([camera.position[:2] for camera in cameras], axis=0)
    return _SceneData(scene_dir.name, cameras, 0, ground_truth, offset, fps)


def _anchor_inputs(scenes: list[_SceneData], config: Any, name_map: dict[str, str]) -> tuple[np.ndarray | None, int]:
    """Recentered GT boxes for k-means (None when no scene has ground truth) and the frame count they span.

    `sample_ratio` N > 1 keeps every Nth frame; `detection_range` R > 0 keeps boxes within R metres of the
    (recentered) origin.
    """
    boxes, frames = [], 0
    every = int(config.sample_ratio)
    for scene in scenes:
        if scene.ground_truth is None:
            continue
        for frame, objects in scene.ground_truth.items():
            if every > 1 and frame % every:
                continue
            frames += 1
            boxes.extend(_box_row(obj, scene.offset) for obj in objects)
    if frames == 0 and not boxes:
        return None, 0
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 10)
    detection_range = float(config.detection_range)
    if detection_range > 0:
        array = array[np.hypot(array[:, 0], array[:, 1]) <= detection_range]
    return array, frames


def _extract_scene_frames(scene: _SceneData, split_root: Path, frame_cache: Path, num_frames: int,
                          skipped: SkipCounter, notes: list[str]) -> list[CameraCalibration]:
    """Extract frames of every camera; set scene.frame_count; return cameras that have video."""
    usable, counts = [], []
    for camera in scene.cameras:
        video = split_root / scene.name / "videos" / f"{camera.name}.mp4"
        if not video.is_file():
            skipped.add("cameras without a video")
            notes.append(f"{scene.name}/{camera.name}: no video {video.name}, camera left out")
            continue
        count = extract_frames(video, frame_cache / scene.name / camera.name, num_frames)
        if count == 0:
            skipped.add("cameras with an unreadable video")
            notes.append(f"{scene.name}/{camera.name}: video has no readable frames, camera left out")
            continue
        usable.append(camera)
        counts.append(count)
    if not usable:
        notes.append(f"{scene.name}: no camera with video, scene left out")
        return []
    scene.frame_count = min(counts)
    if scene.frame_count < num_frames:
        notes.append(f"{scene.name}: {scene.frame_count} frames (fewer than aicity.num_frames={num_frames})")
    if scene.ground_truth is not None:
        beyond = [frame for frame in scene.ground_truth if frame >= scene.frame_count]
        if beyond:
            skipped.add("ground-truth frames without video", len(beyond))
    return usable


def _camera_groups(scene: _SceneData, cameras: list[CameraCalibration], mode: str) -> list[list[CameraCalibration]]:
    ordered = list(cameras)
    if mode == "all":
        return [ordered]
    if mode == "random":
        permutation = np.random.default_rng(zlib.crc32(scene.name.encode())).permutation(len(ordered))
        ordered = [ordered[index] for index in permutation]
    count = math.ceil(len(ordered) / MAX_CAMERAS_PER_GROUP)
    return [list(chunk) for chunk in _split_evenly(ordered, count)]


def _split_evenly(items: list, count: int) -> list[list]:
    base, extra = divmod(len(items), count)
    chunks, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        chunks.append(items[start:start + size])
        start += size
    return chunks


def _box_row(obj: SceneObject, offset: np.ndarray) -> list[float]:
    center = obj.center - offset
    return [*center, obj.width, obj.length, obj.height, obj.yaw, *obj.velocity]


class _GroupGeometry:
    """Per-group camera arrays, built once and shared by every frame (pickle stores them once)."""

    def __init__(self, scene: _SceneData, group: list[CameraCalibration], frame_cache: Path, split_root: Path) -> None:
        recenter = np.eye(4)
        recenter[:3, 3] = scene.offset  # recentered point -> original world point
        self.names = [camera.name for camera in group]
        self.intrinsics = np.stack([camera.intrinsic for camera in group])
        self.world_to_camera = np.stack([camera.world_to_camera @ recenter for camera in group])
        self.camera_to_image = np.tile(np.eye(4), (len(group), 1, 1))
        self.camera_to_image[:, :3, :3] = self.intrinsics
        self.world_to_image = self.camera_to_image @ self.world_to_camera
        self.image_dirs = [(frame_cache / scene.name / camera.name).resolve() for camera in group]
        self.depth_files = [f"{scene.name}/depth_maps/{camera.name}.h5" for camera in group]
        self.depth_keys = [_h5_keys(split_root / name) for name in self.depth_files]
        self.image_wh = np.array([[camera.width or 0, camera.height or 0] for camera in group], dtype=np.int64)
        if self.image_wh.min() == 0:
            _fill_image_size(self)


def _frame_info(scene: _SceneData, geometry: _GroupGeometry, group_index: int, frame: int, name_map: dict[str, str],
                boxes_per_class: Counter) -> dict:
    depth_key = f"distance_to_image_plane_{frame:05d}.png"
    info: dict[str, Any] = {
        "token": f"{scene.name}/{group_index}/{frame:06d}",
        "scene": scene.name,
        "group": group_index,
        "sequence_id": f"{scene.name}+{group_index}",
        "frame_index": frame,
        "timestamp": frame / scene.fps,
        "world_offset": scene.offset,
        "camera_names": geometry.names,
        "image_paths": [str(frame_path(directory, frame)) for directory in geometry.image_dirs],
        "depth_refs": [(name, depth_key) if depth_key in keys else None
                       for name, keys in zip(geometry.depth_files, geometry.depth_keys)],
        "image_wh": geometry.image_wh,
        "intrinsics": geometry.intrinsics,
        "world_to_camera": geometry.world_to_camera,
        "camera_to_image": geometry.camera_to_image,
        "world_to_image": geometry.world_to_image,
        "has_gt": scene.ground_truth is not None,
    }
    if scene.ground_truth is None:
        return info
    objects = scene.ground_truth.get(frame, [])
    boxes_2d = np.full((len(objects), len(geometry.names), 4), np.nan, dtype=np.float32)
    for row, obj in enumerate(objects):
        for column, name in enumerate(geometry.names):
            if name in obj.visible_2d:
                boxes_2d[row, column] = obj.visible_2d[name]
    visibility = ~np.isnan(boxes_2d[..., 0])
    names = [name_map.get(obj.class_name, obj.class_name) for obj in objects]
    boxes_per_class.update(names)
    info.update({
        "gt_boxes": np.asarray([_box_row(obj, scene.offset) for obj in objects], dtype=np.float32).reshape(-1, 10),
        "gt_names": names,
        "gt_instance_ids": np.asarray([obj.object_id for obj in objects], dtype=np.int64),
        "gt_velocity": np.asarray([obj.velocity for obj in objects], dtype=np.float32).reshape(-1, 3),
        "gt_visibility": visibility,
        "gt_boxes_2d": boxes_2d,
        "valid_flag": visibility.any(axis=1),
    })
    return info


def _fill_image_size(geometry: _GroupGeometry) -> None:
    """Calibration without frameWidth/frameHeight: take the size of the first extracted frame."""
    import cv2

    for index, directory in enumerate(geometry.image_dirs):
        if geometry.image_wh[index].min() == 0:
            image = cv2.imread(str(frame_path(directory, 0)))
            if image is not None:
                geometry.image_wh[index] = [image.shape[1], image.shape[0]]


def _h5_keys(path: Path) -> frozenset[str]:
    if not path.is_file():
        return frozenset()
    try:
        with h5py.File(path, "r") as handle:
            return frozenset(handle.keys())
    except OSError:
        LOG.warning("%s: unreadable depth file, depth left out", path)
        return frozenset()


def _metadata(aicity: Any, scene: _SceneData, group: list[CameraCalibration], group_index: int, mode: str,
              classes: list[str], name_map: dict[str, str], split_root: Path, frame_cache: Path) -> dict:
    class_config = aicity.class_config
    ranges = {name_map.get(str(k), str(k)): float(v) for k, v in sorted((class_config.CLASS_RANGE_DICT or {}).items())}
    attributes = {name_map.get(str(k), str(k)): str(v) for k, v in sorted((class_config.ATTRIBUTE_DICT or {}).items())}
    return {
        "format": OVPKL_FORMAT,
        "aicity_version": str(aicity.version),
        "split": str(aicity.split),
        "scene": scene.name,
        "group": group_index,
        "camera_grouping_mode": mode,
        "camera_names": [camera.name for camera in group],
        "classes": classes,
        "class_range": ranges,
        "attributes": attributes,
        "world_offset": scene.offset,
        "fps": scene.fps,
        "has_gt": scene.ground_truth is not None,
        "split_root": str(split_root.resolve()),
        "frame_cache": str(frame_cache.resolve()),
    }
