"""Reading one AICity 2025 scene folder: calibration, ground truth and track velocities.

Real scenes are untidy, so nothing here raises on a single bad object: it is skipped and counted in a
`SkipCounter` that the converter reports. A missing or unreadable calibration is fatal for the scene.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparse4d.errors import DataError

LOG = logging.getLogger(__name__)
DEFAULT_FPS = 30.0
MAX_PLAUSIBLE_SPEED = 10.0  # m/s; faster than any warehouse object, so a jump means an id switch
MAX_TRACK_GAP_FRAMES = 5  # frames; a longer gap ends a track segment (no velocity across it)


@dataclass(frozen=True)
class CameraCalibration:
    name: str
    intrinsic: np.ndarray  # 3x3
    world_to_camera: np.ndarray  # 4x4, OpenCV camera axes
    width: int | None
    height: int | None
    fps: float

    @property
    def position(self) -> np.ndarray:
        rotation, translation = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -rotation.T @ translation


@dataclass
class SceneObject:
    """One annotated object in one frame, after class filtering (world frame, not recentered)."""

    class_name: str  # the AICity name, before MAP_CLASS_NAMES
    object_id: int
    center: np.ndarray  # 3
    length: float
    width: float
    height: float
    yaw: float
    visible_2d: dict[str, list[float]]
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass
class SkipCounter:
    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, amount: int = 1) -> None:
        self.counts[reason] += amount


def read_calibration(scene_dir: Path) -> list[CameraCalibration]:
    path = scene_dir / "calibration.json"
    try:
        sensors = json.loads(path.read_text())["sensors"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: cannot read the camera list ({error})", hint="expected a `sensors` list") from error
    cameras = []
    for index, sensor in enumerate(sensors):
        if not isinstance(sensor, dict) or sensor.get("type", "camera") != "camera":
            continue
        name = str(sensor.get("id", f"sensor_{index}"))
        try:
            intrinsic = np.asarray(sensor["intrinsicMatrix"], dtype=np.float64).reshape(3, 3)
            extrinsic = np.asarray(sensor["extrinsicMatrix"], dtype=np.float64).reshape(3, 4)
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path}: sensor '{name}' has no valid intrinsicMatrix 3x3 / extrinsicMatrix 3x4 ({error})") from error
        world_to_camera = np.eye(4)
        world_to_camera[:3] = extrinsic
        attributes = _attributes(sensor.get("attributes", []))
        cameras.append(CameraCalibration(
            name=name,
            intrinsic=intrinsic,
            world_to_camera=world_to_camera,
            width=_int_or_none(attributes.get("frameWidth")),
            height=_int_or_none(attributes.get("frameHeight")),
            fps=float(attributes.get("fps") or DEFAULT_FPS),
        ))
    if not cameras:
        raise DataError(f"{path}: no camera sensors")
    return sorted(cameras, key=lambda camera: camera.name)


def read_ground_truth(scene_dir: Path, *, classes: list[str], sub_classes: dict[str, str], max_frames: int,
                      skipped: SkipCounter) -> dict[int, list[SceneObject]] | None:
    """Objects per frame (< max_frames) for the listed classes; None when the scene has no ground truth."""
    path = scene_dir / "ground_truth.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object keyed by frame number")
    frames: dict[int, list[SceneObject]] = {}
    for key, objects in raw.items():
        try:
            frame = int(key)
        except ValueError:
            skipped.add("ground-truth keys that are not frame numbers")
            continue
        if frame < 0 or frame >= max_frames:
            continue
        frames[frame] = [obj for obj in (_parse_object(item, classes, sub_classes, skipped) for item in objects or [])
                         if obj is not None]
    return frames


def _parse_object(item: object, classes: list[str], sub_classes: dict[str, str],
                  skipped: SkipCounter) -> SceneObject | None:
    if not isinstance(item, dict):
        skipped.add("malformed objects")
        return None
    kind = str(item.get("object type", ""))
    kind = sub_classes.get(kind, kind)
    if kind not in classes:
        skipped.add(f"objects of class '{kind}' (not in CLASS_LIST)")
        return None
    try:
        center = np.asarray(item["3d location"], dtype=np.float64).reshape(3)
        length, width, height = (float(value) for value in item["3d bounding box scale"])
        yaw = float(item["3d bounding box rotation"][2])
        object_id = int(item["object id"])
    except (KeyError, ValueError, TypeError, IndexError):
        skipped.add("malformed objects")
        return None
    if not (np.isfinite(center).all() and min(length, width, height) > 0 and math.isfinite(yaw)):
        skipped.add("malformed objects")
        return None
    visible = item.get("2d bounding box visible") or {}
    if not isinstance(visible, dict):
        visible = {}
    visible = {str(camera): [float(v) for v in box] for camera, box in visible.items()
               if isinstance(box, (list, tuple)) and len(box) == 4}
    if not visible:
        skipped.add("objects without a 2d box (kept, not visible)")
    return SceneObject(kind, object_id, center, length, width, height, yaw, visible)


def assign_velocities(frames: dict[int, list[SceneObject]], fps: float, scene: str, skipped: SkipCounter) -> None:
    """Finite-difference velocities along each track; implausible ones are warned about and zeroed."""
    tracks: dict[int, list[tuple[int, SceneObject]]] = {}
    for frame in sorted(frames):
        for obj in frames[frame]:
            tracks.setdefault(obj.object_id, []).append((frame, obj))
    for object_id, track in tracks.items():
        for index, (frame, obj) in enumerate(track):
            before = track[index - 1] if index > 0 and frame - track[index - 1][0] <= MAX_TRACK_GAP_FRAMES else None
            after = (track[index + 1] if index + 1 < len(track) and track[index + 1][0] - frame <= MAX_TRACK_GAP_FRAMES
                     else None)
            first, last = before or (frame, obj), after or (frame, obj)
            if first[0] == last[0]:
                continue
            velocity = (last[1].center - first[1].center) * fps / (last[0] - first[0])
            speed = float(np.linalg.norm(velocity))
            if speed > MAX_PLAUSIBLE_SPEED:
                LOG.warning("%s: object %d at frame %d moves at %.1f m/s (> %.0f m/s); velocity set to 0",
                            scene, object_id, frame, speed, MAX_PLAUSIBLE_SPEED)
                skipped.add("implausible velocities (zeroed)")
                continue
            obj.velocity = velocity


def _attributes(raw: object) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(key): str(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return {str(item.get("name")): str(item.get("value")) for item in raw if isinstance(item, dict)}
    return {}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None
