"""Initial anchors for the instance bank: seeded k-means over ground-truth boxes.

Anchors are the 11-value encoding of sparse4d/batch.py. Clustering uses position, log size and
heading (sin, cos); velocities of the members are averaged into the anchor. Fewer distinct boxes
than anchors is an error: padded or invented anchors would silently hurt training.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from sparse4d.batch import ANCHOR_COS, ANCHOR_DIMS, ANCHOR_SIN, BOX_H, BOX_L, BOX_W, BOX_YAW
from sparse4d.errors import DataError

KMEANS_SEED = 0
KMEANS_MAX_ITERATIONS = 50
_CHUNK = 8192
_CLUSTER_COLUMNS = slice(0, 8)  # x, y, z, log w, log l, log h, sin, cos


def boxes_to_anchor_rows(boxes: np.ndarray) -> np.ndarray:
    """(M, 10) boxes -> (M, 11) rows [x, y, z, log w, log l, log h, sin yaw, cos yaw, vx, vy, vz]."""
    rows = np.empty((len(boxes), ANCHOR_DIMS), dtype=np.float64)
    rows[:, 0:3] = boxes[:, 0:3]
    rows[:, 3:6] = np.log(boxes[:, [BOX_W, BOX_L, BOX_H]])
    rows[:, ANCHOR_SIN] = np.sin(boxes[:, BOX_YAW])
    rows[:, ANCHOR_COS] = np.cos(boxes[:, BOX_YAW])
    rows[:, 8:11] = boxes[:, 7:10]
    return rows


def fit_anchors(boxes: np.ndarray, num_anchor: int, *, frames: int, split: str) -> np.ndarray:
    """k-means++ then Lloyd iterations, seeded; returns float32 (num_anchor, 11)."""
    rows = boxes_to_anchor_rows(np.asarray(boxes, dtype=np.float64))
    distinct = np.unique(rows[:, _CLUSTER_COLUMNS], axis=0)
    if len(distinct) < num_anchor:
        per_frame = len(rows) / frames if frames else 0.0
        needed = f"about {math.ceil(num_anchor / per_frame)} frames" if per_frame > 0 else "frames with objects"
        raise DataError(
            f"anchor_init_config.num_anchor={num_anchor} needs at least {num_anchor} distinct ground-truth boxes, "
            f"but split '{split}' has {len(distinct)} ({len(rows)} boxes in {frames} frames, "
            f"{per_frame:.1f} per frame), so {needed} are needed",
            key="aicity.anchor_init_config.num_anchor",
            hint="convert more frames/scenes (aicity.num_frames) or lower num_anchor",
        )
    features = rows[:, _CLUSTER_COLUMNS]
    rng = np.random.default_rng(KMEANS_SEED)
    centres = _kmeans_plus_plus(features, num_anchor, rng)
    assignment = np.full(len(features), -1)
    for _ in range(KMEANS_MAX_ITERATIONS):
        new_assignment, distance = _nearest(features, centres)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        centres = _means(features, assignment, num_anchor)
        for empty in np.flatnonzero(np.bincount(assignment, minlength=num_anchor) == 0):
            farthest = int(np.argmax(distance))
            centres[empty] = features[farthest]
            distance[farthest] = -1.0
    anchors = _means(rows, assignment, num_anchor)
    _, distance = _nearest(features, centres)
    for empty in np.flatnonzero(np.bincount(assignment, minlength=num_anchor) == 0):  # only if not converged
        farthest = int(np.argmax(distance))
        anchors[empty], distance[farthest] = rows[farthest], -1.0
    heading = np.hypot(anchors[:, ANCHOR_SIN], anchors[:, ANCHOR_COS])
    heading[heading < 1e-6] = 1.0
    anchors[:, ANCHOR_SIN] /= heading
    anchors[:, ANCHOR_COS] /= heading
    return anchors.astype(np.float32)


def save_anchors(anchors: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, anchors)
    os.replace(tmp, path)


def _kmeans_plus_plus(features: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    centres = np.empty((count, features.shape[1]))
    centres[0] = features[rng.integers(len(features))]
    closest = ((features - centres[0]) ** 2).sum(axis=1)
    for index in range(1, count):
        total = closest.sum()
        choice = int(rng.choice(len(features), p=closest / total)) if total > 0 else int(np.argmax(closest))
        centres[index] = features[choice]
        closest = np.minimum(closest, ((features - centres[index]) ** 2).sum(axis=1))
    return centres


def _nearest(features: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assignment = np.empty(len(features), dtype=np.int64)
    distance = np.empty(len(features))
    centre_norms = (centres ** 2).sum(axis=1)
    for start in range(0, len(features), _CHUNK):
        chunk = features[start:start + _CHUNK]
        squared = (chunk ** 2).sum(axis=1)[:, None] - 2 * chunk @ centres.T + centre_norms[None]
        assignment[start:start + _CHUNK] = squared.argmin(axis=1)
        distance[start:start + _CHUNK] = squared.min(axis=1)
    return assignment, distance


def _means(values: np.ndarray, assignment: np.ndarray, count: int) -> np.ndarray:
    sums = np.zeros((count, values.shape[1]))
    np.add.at(sums, assignment, values)
    sizes = np.bincount(assignment, minlength=count)[:, None]
    return sums / np.maximum(sizes, 1)
