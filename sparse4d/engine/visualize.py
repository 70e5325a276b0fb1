"""Pictures a person looks at: a bird's-eye view per frame and camera images with projected boxes.

Drawn with OpenCV only. Colours follow the track id (the same object keeps its colour across frames);
boxes without a track are grey. Ground truth, when known, is drawn thin and white in the BEV plot.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sparse4d.metrics import quaternion_to_yaw

BEV_PIXELS = 600
GREY = (128, 128, 128)


def track_colour(track_id: object) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per track id."""
    if not isinstance(track_id, int) or track_id < 0:
        return GREY
    hue = (track_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def box_corners_3d(translation: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    """(8, 3) corners: bottom face then top face; size is [w, l, h], l along the heading."""
    w, l, h = (float(v) for v in size)
    x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    y = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = math.cos(yaw), math.sin(yaw)
    pts = np.stack([c * x - s * y, s * x + c * y, z], axis=1)
    return pts + np.asarray(translation, dtype=np.float64)[None, :3]


def _shown(boxes: Sequence[dict], threshold: float) -> list[dict]:
    return [b for b in boxes if float(b.get("detection_score", 1.0)) >= threshold]


def draw_bev(boxes: Sequence[dict], *, threshold: float, gt: Sequence[dict] = (), extent: float | None = None,
             title: str = "") -> np.ndarray:
    """Top view (x right, y up) of the boxes scoring at least `threshold`; metres grid every 5 m."""
    shown = _shown(boxes, threshold)
    if extent is None:
        far = [abs(v) for b in list(shown) + list(gt) for v in b["translation"][:2]]
        extent = max(10.0, (max(far) + 3.0) if far else 10.0)
    scale = BEV_PIXELS / (2 * extent)
    canvas = np.full((BEV_PIXELS, BEV_PIXELS, 3), 24, np.uint8)

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] + extent) * scale, (extent - xy[:, 1]) * scale], axis=1).round().astype(np.int32)

    for metre in np.arange(-math.floor(extent / 5) * 5, extent, 5.0):
        p = int(round((metre + extent) * scale))
        cv2.line(canvas, (p, 0), (p, BEV_PIXELS - 1), (48, 48, 48), 1)
        cv2.line(canvas, (0, p), (BEV_PIXELS - 1, p), (48, 48, 48), 1)
    for box in gt:
        corners = box_corners_3d(box["translation"], box["size"], quaternion_to_yaw(box["rotation"]))[:4, :2]
        cv2.polylines(canvas, [to_px(corners)], True, (230, 230, 230), 1, cv2.LINE_AA)
    for box in shown:
        yaw = quaternion_to_yaw(box["rotation"])
        corners = box_corners_3d(box["translation"], box["size"], yaw)[:4, :2]
        colour = track_colour(box.get("tracking_id"))
        pts = to_px(corners)
        cv2.polylines(canvas, [pts], True, colour, 2, cv2.LINE_AA)
        front = to_px(corners[:2].mean(axis=0, keepdims=True))[0]
        centre = to_px(np.asarray([box["translation"][:2]]))[0]
        cv2.line(canvas, tuple(int(v) for v in centre), tuple(int(v) for v in front), colour, 2, cv2.LINE_AA)
        if isinstance(box.get("tracking_id"), int):
            cv2.putText(canvas, str(box["tracking_id"]), tuple(int(v) + 3 for v in centre), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def draw_camera(image_bgr: np.ndarray, world_to_image: np.ndarray, boxes: Sequence[dict], *, threshold: float) -> np.ndarray:
    """Project each box's corners with the 4x4 world->image matrix and draw its edges (boxes behind the camera skipped)."""
    out = image_bgr.copy()
    for box in _shown(boxes, threshold):
        corners = box_corners_3d(box["translation"], box["size"], quaternion_to_yaw(box["rotation"]))
        homo = np.concatenate([corners, np.ones((8, 1))], axis=1) @ np.asarray(world_to_image, dtype=np.float64).T
        depth = homo[:, 2]
        if (depth <= 0.1).any():
            continue
        uv = homo[:, :2] / depth[:, None]
        if not np.isfinite(uv).all() or np.abs(uv).max() > 1e5:
            continue
        colour = track_colour(box.get("tracking_id"))
        pts = uv.round().astype(np.int32)
        for a, b in EDGES:
            cv2.line(out, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), colour, 1, cv2.LINE_AA)
    return out


def camera_grid(images: Sequence[np.ndarray], columns: int, down_sample: int) -> np.ndarray:
    """Tile camera pictures `columns` per row after shrinking by `down_sample`."""
    small = [cv2.resize(im, (max(1, im.shape[1] // down_sample), max(1, im.shape[0] // down_sample)), interpolation=cv2.INTER_AREA)
             for im in images]
    h = max(im.shape[0] for im in small)
    w = max(im.shape[1] for im in small)
    columns = max(1, min(columns, len(small)))
    rows = -(-len(small) // columns)
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, im in enumerate(small):
        r, c = divmod(i, columns)
        grid[r * h: r * h + im.shape[0], c * w: c * w + im.shape[1]] = im
    return grid


def write_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def write_frame_pictures(info: dict, boxes: Sequence[dict], folder: Path, *, threshold: float, columns: int, down_sample: int,
                         gt: Sequence[dict] = ()) -> list[Path]:
    """`<folder>/bev/<token>.png` and `<folder>/cameras/<token>.png` for one frame (token '/' -> '_')."""
    name = str(info["token"]).replace("/", "_") + ".png"
    bev_path, cam_path = folder / "bev" / name, folder / "cameras" / name
    write_png(draw_bev(boxes, threshold=threshold, gt=gt, title=str(info["token"])), bev_path)
    pictures = []
    for camera, image_path in enumerate(info["image_paths"]):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        pictures.append(draw_camera(image, info["world_to_image"][camera], boxes, threshold=threshold))
    written = [bev_path]
    if pictures:
        write_png(camera_grid(pictures, columns, down_sample), cam_path)
        written.append(cam_path)
    return written
