"""Extracting video frames to JPEG files once, so training reads images at random.

Every frame file is written atomically; a small marker per camera, written last, records how many
frames the video held and which video it came from, so a rerun with the same video skips decoding.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2

MARKER = ".extracted.json"
JPEG_QUALITY = 95


def frame_path(camera_dir: Path, frame: int) -> Path:
    return camera_dir / f"{frame:06d}.jpg"


def extract_frames(video: Path, camera_dir: Path, limit: int) -> int:
    """Make sure frames 0..n-1 of `video` (n <= limit) exist under `camera_dir`; return n (0: unreadable)."""
    camera_dir.mkdir(parents=True, exist_ok=True)
    stat = video.stat()
    source = {"video": str(video.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cached = _read_marker(camera_dir)
    if cached is not None and cached.get("source") == source:
        exhausted = cached["frames"] < cached["limit"]
        if cached["limit"] >= limit or exhausted:
            count = min(cached["frames"], limit)
            if all(frame_path(camera_dir, frame).is_file() for frame in range(count)):
                return count
    capture = cv2.VideoCapture(str(video))
    count = 0
    try:
        while count < limit:
            ok, bgr = capture.read()
            if not ok:
                break
            target = frame_path(camera_dir, count)
            if not target.is_file():
                tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.jpg")
                if not cv2.imwrite(str(tmp), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise OSError(f"cannot write {tmp}")
                os.replace(tmp, target)
            count += 1
    finally:
        capture.release()
    marker = camera_dir / MARKER
    tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"source": source, "frames": count, "limit": limit}))
    os.replace(tmp, marker)
    return count


def _read_marker(camera_dir: Path) -> dict | None:
    try:
        marker = json.loads((camera_dir / MARKER).read_text())
        int(marker["frames"]), int(marker["limit"])
        return marker
    except (OSError, ValueError, KeyError, TypeError):
        return None
