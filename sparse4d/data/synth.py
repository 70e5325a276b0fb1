"""Synthetic AICity 2025 scenes that a detector can learn from.

No real data can be downloaded here, so tests, benchmarks and smoke trainings use scenes written in
exactly the AICity 2025 layout::

    <Scene>/calibration.json          sensors list (intrinsic, extrinsic world->camera, cameraMatrix = K.E)
    <Scene>/ground_truth.json         {"<frame>": [objects...]} (omitted for the test split, as in AICity)
    <Scene>/videos/<Camera>.mp4       30 fps
    <Scene>/depth_maps/<Camera>.h5    uint16 mm, datasets distance_to_image_plane_{frame:05d}.png

Cameras are static (as in AICity) and look inward at a textured warehouse floor. Objects move on
smooth Lissajous paths, face their direction of travel and are drawn as shaded cuboids with a
class-specific colour, a darker front band (so heading is visible) and a head band for humanoids.
Rendering ray-casts every pixel against the floor plane and each box, so occlusion and depth are exact
(z-buffer) and the depth maps agree with the images.

Conventions: world metres, z up. "3d location" is the box centre, "3d bounding box scale" is
[length along heading, width, height], "3d bounding box rotation" is [pitch, roll, yaw] radians.
"2d bounding box visible" is [xmin, ymin, xmax, ymax] in pixels (inclusive) of the visible pixels, only
for cameras that see at least `MIN_VISIBLE_PIXELS` of the object.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

FPS = 30
MIN_VISIBLE_PIXELS = 4
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ClassLook:
    """Size (metres) and appearance (RGB) of one object class."""

    length: float
    width: float
    height: float
    body_rgb: tuple[int, int, int]
    accent_rgb: tuple[int, int, int]
    head_band: bool  # humanoids get a band on top, so they differ from boxes of similar size
    speed_scale: float


CLASS_LOOKS: dict[str, ClassLook] = {
    "Person": ClassLook(0.5, 0.6, 1.75, (40, 90, 200), (230, 180, 140), True, 1.0),
    "FourierGR1T2": ClassLook(0.45, 0.7, 1.65, (225, 225, 225), (30, 30, 30), True, 0.8),
    "AgilityDigit": ClassLook(0.6, 0.55, 1.55, (240, 130, 30), (70, 70, 70), True, 0.8),
    "Transporter": ClassLook(1.3, 0.9, 0.35, (230, 210, 40), (20, 20, 20), False, 0.9),
    "NovaCarter": ClassLook(0.7, 0.5, 0.45, (40, 170, 70), (240, 240, 240), False, 1.2),
    "Forklift": ClassLook(2.6, 1.2, 2.1, (200, 40, 40), (40, 40, 40), False, 0.5),
}
CLASS_NAMES = tuple(CLASS_LOOKS)
FLOOR_HALF_EXTENT = (8.0, 6.0)  # objects stay inside this rectangle around the scene origin
LIGHT_DIR = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])


@dataclass(frozen=True)
class SynthCamera:
    name: str
    intrinsic: np.ndarray  # 3x3
    rotation: np.ndarray  # 3x3 world->camera (OpenCV axes: x right, y down, z forward)
    translation: np.ndarray  # 3, world->camera
    position: np.ndarray  # 3, camera centre in world

    @property
    def extrinsic(self) -> np.ndarray:
        return np.concatenate([self.rotation, self.translation[:, None]], axis=1)

    @property
    def camera_matrix(self) -> np.ndarray:
        return self.intrinsic @ self.extrinsic


@dataclass(frozen=True)
class ObjectState:
    object_id: int
    class_name: str
    center: np.ndarray  # 3
    yaw: float

    @property
    def look(self) -> ClassLook:
        return CLASS_LOOKS[self.class_name]


@dataclass(frozen=True)
class _Track:
    object_id: int
    class_name: str
    amplitude: np.ndarray  # 2
    omega: np.ndarray  # 2, rad/s
    phase: np.ndarray  # 2
    base: np.ndarray  # 2


class SyntheticScene:
    """One warehouse scene: static cameras, moving objects, and a renderer."""

    def __init__(self, *, rig_sequence: np.random.SeedSequence, object_sequence: np.random.SeedSequence, cameras: int,
                 size: tuple[int, int]) -> None:
        rig_rng = np.random.default_rng(rig_sequence)
        rng = np.random.default_rng(object_sequence)
        self.width, self.height = size
        # Scenes do not sit at the world origin, so recentering has something to do.
        self.origin = np.array([*rig_rng.uniform(-40.0, 40.0, 2), 0.0])
        self.cameras = [self._make_camera(rig_rng, index, cameras) for index in range(cameras)]
        self._floor = [self._render_floor(camera, rig_rng) for camera in self.cameras]
        kinds = list(CLASS_NAMES) + list(rng.choice(CLASS_NAMES[:5], size=2))
        self.tracks = [self._make_track(rng, object_id + 1, kind) for object_id, kind in enumerate(kinds)]

    def _make_camera(self, rng: np.random.Generator, index: int, count: int) -> SynthCamera:
        angle = 2 * np.pi * index / count + rng.uniform(-0.3, 0.3) + 0.4
        radius = rng.uniform(10.0, 12.0)
        position = self.origin + np.array([radius * np.cos(angle), radius * 0.8 * np.sin(angle), rng.uniform(5.0, 7.0)])
        target = self.origin + np.array([*rng.uniform(-1.5, 1.5, 2), 0.5])
        forward = (target - position) / np.linalg.norm(target - position)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        focal = 0.62 * self.width
        intrinsic = np.array([[focal, 0.0, self.width / 2], [0.0, focal, self.height / 2], [0.0, 0.0, 1.0]])
        return SynthCamera(f"Camera_{index:04d}", intrinsic, rotation, -rotation @ position, position)

    def _make_track(self, rng: np.random.Generator, object_id: int, kind: str) -> _Track:
        look = CLASS_LOOKS[kind]
        margin = look.length / 2 + 0.5
        amplitude = rng.uniform(1.5, 4.0, 2)
        base = np.array([
            rng.uniform(-FLOOR_HALF_EXTENT[0] + margin + amplitude[0], FLOOR_HALF_EXTENT[0] - margin - amplitude[0]),
            rng.uniform(-FLOOR_HALF_EXTENT[1] + margin + amplitude[1], FLOOR_HALF_EXTENT[1] - margin - amplitude[1]),
        ])
        omega = rng.uniform(0.15, 0.35, 2) * look.speed_scale * rng.choice([-1.0, 1.0], 2)
        return _Track(object_id, kind, amplitude, omega, rng.uniform(0, 2 * np.pi, 2), base)

    def object_states(self, frame: int) -> list[ObjectState]:
        time = frame / FPS
        states = []
        for track in self.tracks:
            angle = track.omega * time + track.phase
            xy = self.origin[:2] + track.base + track.amplitude * np.sin(angle)
            velocity = track.amplitude * track.omega * np.cos(angle)
            yaw = float(np.arctan2(velocity[1], velocity[0]))
            height = CLASS_LOOKS[track.class_name].height
            states.append(ObjectState(track.object_id, track.class_name, np.array([xy[0], xy[1], height / 2]), yaw))
        return states

    # -- rendering -------------------------------------------------------------------------------
    def _pixel_rays(self, camera: SynthCamera) -> np.ndarray:
        """World-frame ray directions scaled so that the ray parameter equals camera-frame depth."""
        us, vs = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        pixels = np.stack([us, vs, np.ones_like(us)], axis=-1)
        camera_dirs = pixels @ np.linalg.inv(camera.intrinsic).T
        return camera_dirs @ camera.rotation  # row-vector form of R^T d

    def _render_floor(self, camera: SynthCamera, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rays = self._pixel_rays(camera)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(rays[..., 2] < -1e-6, -camera.position[2] / rays[..., 2], 0.0)
        points = camera.position + rays * depth[..., None]
        local = points[..., :2] - self.origin[:2]
        tile = (np.floor(local[..., 0]) + np.floor(local[..., 1])) % 2
        rgb = np.where(tile[..., None] > 0, [150, 145, 135], [115, 112, 105]).astype(np.float64)
        lines = (np.abs(local - np.round(local / 4.0) * 4.0) < 0.06).any(axis=-1)
        rgb[lines] = [200, 190, 60]
        rgb += rng.normal(0.0, 6.0, rgb.shape)
        rgb[depth <= 0] = [70, 72, 80]
        return np.clip(rgb, 0, 255), depth

    def render(self, camera_index: int, states: list[ObjectState]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (rgb uint8 HxWx3, depth metres HxW with 0 = none, object id HxW with 0 = floor)."""
        camera = self.cameras[camera_index]
        floor_rgb, floor_depth = self._floor[camera_index]
        rgb = floor_rgb.copy()
        depth = np.where(floor_depth > 0, floor_depth, np.inf)
        ids = np.zeros(depth.shape, dtype=np.int32)
        rays = None
        for state in states:
            window = self._screen_window(camera, state)
            if window is None:
                continue
            if rays is None:
                rays = self._pixel_rays(camera)
            x0, y0, x1, y1 = window
            self._draw_box(camera, state, rays[y0:y1, x0:x1], rgb[y0:y1, x0:x1], depth[y0:y1, x0:x1], ids[y0:y1, x0:x1])
        depth[~np.isfinite(depth)] = 0.0
        return rgb.astype(np.uint8), depth, ids

    def _screen_window(self, camera: SynthCamera, state: ObjectState) -> tuple[int, int, int, int] | None:
        corners = box_corners(state.center, state.look.length, state.look.width, state.look.height, state.yaw)
        cam_points = corners @ camera.rotation.T + camera.translation
        if (cam_points[:, 2] <= 0.05).all():
            return None
        if (cam_points[:, 2] <= 0.05).any():
            return 0, 0, self.width, self.height
        pixels = cam_points @ camera.intrinsic.T
        uv = pixels[:, :2] / pixels[:, 2:]
        x0, y0 = np.floor(uv.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(uv.max(axis=0)).astype(int) + 2
        x0, x1 = max(x0, 0), min(x1, self.width)
        y0, y1 = max(y0, 0), min(y1, self.height)
        if x0 >= x1 or y0 >= y1:
            return None
        return int(x0), int(y0), int(x1), int(y1)

    def _draw_box(self, camera: SynthCamera, state: ObjectState, rays: np.ndarray, rgb: np.ndarray,
                  depth: np.ndarray, ids: np.ndarray) -> None:
        look = state.look
        cos_yaw, sin_yaw = np.cos(state.yaw), np.sin(state.yaw)
        to_local = np.array([[cos_yaw, sin_yaw, 0.0], [-sin_yaw, cos_yaw, 0.0], [0.0, 0.0, 1.0]])
        origin = to_local @ (camera.position - state.center)
        directions = rays @ to_local.T
        half = np.array([look.length, look.width, look.height]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / directions
            t_low = (-half - origin) * inverse
            t_high = (half - origin) * inverse
        t_near_axes = np.nan_to_num(np.minimum(t_low, t_high), nan=-np.inf)
        t_far_axes = np.nan_to_num(np.maximum(t_low, t_high), nan=np.inf)
        t_near = t_near_axes.max(axis=-1)
        t_far = t_far_axes.min(axis=-1)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
        if not hit.any():
            return
        axis = t_near_axes.argmax(axis=-1)[hit]
        normal_local = np.zeros((axis.size, 3))
        normal_local[np.arange(axis.size), axis] = -np.sign(directions[hit][np.arange(axis.size), axis])
        normal_world = normal_local @ to_local  # rows: R^T n
        shade = 0.35 + 0.65 * np.clip(normal_world @ LIGHT_DIR, 0.0, 1.0)
        local_hit = origin + directions[hit] * t_near[hit][:, None]
        colour = np.tile(np.array(look.body_rgb, dtype=np.float64), (axis.size, 1))
        front = local_hit[:, 0] > half[0] * 0.55
        colour[front] = 0.5 * colour[front] + 0.5 * np.array(look.accent_rgb)
        if look.head_band:
            colour[local_hit[:, 2] > half[2] * 0.7] = look.accent_rgb
        rgb[hit] = colour * shade[:, None]
        depth[hit] = t_near[hit]
        ids[hit] = state.object_id


def box_corners(center: np.ndarray, length: float, width: float, height: float, yaw: float) -> np.ndarray:
    """8x3 world corners of a yawed box (length along the heading)."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs * np.array([length, width, height]) / 2
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[cos_yaw, -sin_yaw, 0.0], [sin_yaw, cos_yaw, 0.0], [0.0, 0.0, 1.0]])
    return local @ rotation.T + np.asarray(center, dtype=np.float64)


def visible_boxes(ids: np.ndarray) -> dict[int, list[int]]:
    """[xmin, ymin, xmax, ymax] of the visible pixels of each object seen by at least MIN_VISIBLE_PIXELS."""
    boxes = {}
    for object_id in np.unique(ids):
        if object_id == 0:
            continue
        ys, xs = np.nonzero(ids == object_id)
        if xs.size >= MIN_VISIBLE_PIXELS:
            boxes[int(object_id)] = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    return boxes


def build_scene(*, seed: int, split: str = "train", scene_index: int = 0, cameras: int = 2,
                size: tuple[int, int] = (256, 128)) -> SyntheticScene:
    """The in-memory scene `write_scene` writes; tests use it to re-render object masks."""
    # Scene k of every split is the same warehouse (camera rig, floor) recorded with other objects and
    # motion, so a held-out split tests new objects and poses in known rigs.
    rig = np.random.SeedSequence([seed, scene_index])
    objects = np.random.SeedSequence([seed, SPLIT_INDEX.get(split, 3), scene_index])
    return SyntheticScene(rig_sequence=rig, object_sequence=objects, cameras=cameras, size=size)


def scene_name(scene_index: int) -> str:
    return f"Warehouse_{scene_index:03d}"


def write_scene(scene_dir: Path, scene: SyntheticScene, *, frames: int, with_ground_truth: bool = True) -> Path:
    """Write one scene in the AICity 2025 layout (see module docstring)."""
    scene_dir = Path(scene_dir)
    (scene_dir / "videos").mkdir(parents=True, exist_ok=True)
    (scene_dir / "depth_maps").mkdir(parents=True, exist_ok=True)
    _write_json(scene_dir / "calibration.json", _calibration(scene))
    ground_truth: dict[str, list[dict]] = {}
    writers = []
    depth_files = []
    try:
        for camera in scene.cameras:
            video_path = scene_dir / "videos" / f"{camera.name}.mp4"
            writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (scene.width, scene.height))
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write {video_path} (mp4v codec missing?)")
            writers.append(writer)
            depth_files.append(h5py.File(scene_dir / "depth_maps" / f"{camera.name}.h5", "w"))
        for frame in range(frames):
            states = scene.object_states(frame)
            visible: dict[int, dict[str, list[int]]] = {state.object_id: {} for state in states}
            for camera_index, camera in enumerate(scene.cameras):
                rgb, depth, ids = scene.render(camera_index, states)
                writers[camera_index].write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                depth_mm = np.clip(np.round(depth * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)
                depth_files[camera_index].create_dataset(f"distance_to_image_plane_{frame:05d}.png", data=depth_mm)
                for object_id, box in visible_boxes(ids).items():
                    visible[object_id][camera.name] = box
            ground_truth[str(frame)] = [_object_record(state, visible[state.object_id]) for state in states]
    finally:
        for writer in writers:
            writer.release()
        for depth_file in depth_files:
            depth_file.close()
    if with_ground_truth:
        _write_json(scene_dir / "ground_truth.json", ground_truth)
    return scene_dir


def make_synthetic_dataset(root: Path, *, scenes: int = 1, cameras: int = 2, frames: int = 20,
                           size: tuple[int, int] = (256, 128), seed: int = 0,
                           splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Write `<root>/<split>/<Scene>/...` for each split; the test split has no ground_truth.json."""
    root = Path(root)
    for split in splits:
        for scene_index in range(scenes):
            scene = build_scene(seed=seed, split=split, scene_index=scene_index, cameras=cameras, size=size)
            write_scene(root / split / scene_name(scene_index), scene, frames=frames, with_ground_truth=split != "test")
    return root


def _object_record(state: ObjectState, visible: dict[str, list[int]]) -> dict:
    look = state.look
    return {
        "object type": state.class_name,
        "object id": state.object_id,
        "3d location": [round(float(value), 5) for value in state.center],
        "3d bounding box scale": [look.length, look.width, look.height],
        "3d bounding box rotation": [0.0, 0.0, round(state.yaw, 6)],
        "2d bounding box visible": visible,
    }


def _calibration(scene: SyntheticScene) -> dict:
    sensors = []
    for camera in scene.cameras:
        sensors.append({
            "type": "camera",
            "id": camera.name,
            "coordinates": {"x": float(camera.position[0]), "y": float(camera.position[1])},
            "scaleFactor": 1.0,
            "translationToGlobalCoordinates": {"x": 0.0, "y": 0.0},
            "attributes": [
                {"name": "fps", "value": str(FPS)},
                {"name": "frameWidth", "value": str(scene.width)},
                {"name": "frameHeight", "value": str(scene.height)},
            ],
            "intrinsicMatrix": camera.intrinsic.tolist(),
            "extrinsicMatrix": camera.extrinsic.tolist(),
            "cameraMatrix": camera.camera_matrix.tolist(),
        })
    return {"calibrationType": "cartesian", "sensors": sensors}


def _write_json(path: Path, payload: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
