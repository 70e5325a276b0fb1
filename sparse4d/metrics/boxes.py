"""Boxes in the nuScenes result format, and the arrays the evaluators work on.

Predictions and annotations are exchanged as lists of dicts per ``sample_token`` (the nuScenes result
format), because that is what results files hold and what people read. The evaluators turn every
sample's list into one :class:`SampleBoxes` of numpy arrays once, validating each field on the way, so a
malformed box is reported by sample and index instead of failing deep inside the matching.

Box layout of the trainer (``sparse4d.batch``): ``[x, y, z, w, l, h, yaw, vx, vy, vz]``; ``size`` in the
result format is ``[w, l, h]`` and ``rotation`` a quaternion ``[qw, qx, qy, qz]`` for a yaw about +z.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparse4d.errors import DataError

# The nuScenes devkit refuses results with more boxes than this in one sample.
MAX_BOXES_PER_SAMPLE = 500

BoxDict = dict[str, Any]
BoxesBySample = Mapping[str, Sequence[Mapping[str, Any]]]


def yaw_to_quaternion(yaw: float) -> list[float]:
    """Quaternion [qw, qx, qy, qz] of a rotation by ``yaw`` radians about +z."""
    half = 0.5 * float(yaw)
    return [math.cos(half), 0.0, 0.0, math.sin(half)]


def quaternion_to_yaw(q: Sequence[float]) -> float:
    """Heading of the box's +x axis after rotation by ``q``, projected on the ground plane.

    Works for any rotation (not only pure yaw), which is how the devkit reads the heading.
    """
    w, x, y, z = (float(v) for v in q)
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError("rotation quaternion has zero or non-finite norm")
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    # First column of the rotation matrix: the image of the x axis.
    return math.atan2(2.0 * (x * y + w * z), 1.0 - 2.0 * (y * y + z * z))


def gt_from_boxes(
    boxes_10d: np.ndarray | Sequence[Sequence[float]],
    names: Sequence[str],
    instance_ids: Sequence[Any] | None = None,
) -> list[BoxDict]:
    """Annotation dicts of one sample from trainer-layout boxes ``(M, 10)`` and their class names.

    ``instance_ids`` are the track ids (needed for tracking; ``None`` gives ids 0..M-1).
    """
    boxes = np.asarray(boxes_10d, dtype=np.float64).reshape(-1, 10) if len(boxes_10d) else np.zeros((0, 10))
    if len(names) != len(boxes):
        raise DataError(f"{len(boxes)} boxes but {len(names)} class names", key="gt_from_boxes.names")
    if instance_ids is not None and len(instance_ids) != len(boxes):
        raise DataError(f"{len(boxes)} boxes but {len(instance_ids)} instance ids", key="gt_from_boxes.instance_ids")
    out = []
    for i, box in enumerate(boxes):
        out.append(
            {
                "translation": box[0:3].tolist(),
                "size": box[3:6].tolist(),
                "rotation": yaw_to_quaternion(box[6]),
                "velocity": box[7:9].tolist(),
                "detection_name": str(names[i]),
                "instance_id": _plain_id(instance_ids[i]) if instance_ids is not None else i,
            }
        )
    return out


def boxes_to_results(
    boxes_10d: np.ndarray | Sequence[Sequence[float]],
    scores: Sequence[float],
    names: Sequence[str],
    track_ids: Sequence[Any] | None = None,
    tracking_scores: Sequence[float] | None = None,
    max_boxes: int = MAX_BOXES_PER_SAMPLE,
) -> list[BoxDict]:
    """Result dicts of one sample from trainer-layout boxes, keeping the ``max_boxes`` best scores.

    The evaluator refuses samples with more than 500 boxes (as the devkit does), so the cut belongs
    here, where the caller chooses it; boxes are returned by descending score. ``tracking_score``
    defaults to the detection score and ``tracking_id`` to the row index.
    """
    boxes = np.asarray(boxes_10d, dtype=np.float64).reshape(-1, 10) if len(boxes_10d) else np.zeros((0, 10))
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    for label, seq in (("scores", score_arr), ("names", names), ("track_ids", track_ids),
                       ("tracking_scores", tracking_scores)):
        if seq is not None and len(seq) != len(boxes):
            raise DataError(f"{len(boxes)} boxes but {len(seq)} {label}", key=f"boxes_to_results.{label}")
    order = np.argsort(-score_arr, kind="stable")[:max_boxes]
    out = []
    for i in order.tolist():
        box = boxes[i]
        out.append(
            {
                "translation": box[0:3].tolist(),
                "size": box[3:6].tolist(),
                "rotation": yaw_to_quaternion(box[6]),
                "velocity": box[7:9].tolist(),
                "detection_name": str(names[i]),
                "detection_score": float(score_arr[i]),
                "tracking_id": _plain_id(track_ids[i]) if track_ids is not None else i,
                "tracking_score": float(tracking_scores[i]) if tracking_scores is not None else float(score_arr[i]),
            }
        )
    return out


def _plain_id(value: Any) -> Any:
    """Track ids as JSON-friendly Python values (numpy ints become int)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class SampleBoxes:
    """The boxes of one sample as arrays (one row per box), in the order they were given."""

    names: np.ndarray  # (n,) str
    xy: np.ndarray  # (n, 2) ground-plane centre
    size: np.ndarray  # (n, 3) w, l, h
    yaw: np.ndarray  # (n,)
    velocity: np.ndarray  # (n, 2), nan where unknown (annotations only)
    score: np.ndarray  # (n,) detection score (0 for annotations)
    track_score: np.ndarray  # (n,) tracking score (0 for annotations)
    track_id: list[Any]  # track ids (instance ids for annotations), None where absent

    def __len__(self) -> int:
        return len(self.names)

    def select(self, mask: np.ndarray) -> SampleBoxes:
        index = np.flatnonzero(mask)
        return SampleBoxes(
            self.names[index], self.xy[index], self.size[index], self.yaw[index], self.velocity[index],
            self.score[index], self.track_score[index], [self.track_id[i] for i in index.tolist()],
        )

    def range_mask(self, class_range: Mapping[str, float] | None) -> np.ndarray:
        """Boxes whose centre lies closer to the scene origin than their class's range (devkit: ``<``)."""
        if class_range is None:
            return np.ones(len(self), dtype=bool)
        limits = np.array([class_range[str(n)] for n in self.names], dtype=np.float64)
        return np.hypot(self.xy[:, 0], self.xy[:, 1]) < limits


def parse_sample(
    token: str,
    boxes: Sequence[Mapping[str, Any]],
    *,
    is_prediction: bool,
    what: str,
) -> SampleBoxes:
    """Validate and convert one sample's dicts; ``what`` names the input ("predictions"/"ground truth")."""
    if not isinstance(boxes, (list, tuple)):
        raise DataError(f"expected a list of boxes, got {type(boxes).__name__}", key=f"{what}[{token!r}]",
                        hint="use the nuScenes result format: results[sample_token] = [box, ...]")
    n = len(boxes)
    names = np.empty(n, dtype=object)
    xy = np.zeros((n, 2))
    size = np.ones((n, 3))
    yaw = np.zeros(n)
    velocity = np.full((n, 2), np.nan)
    score = np.zeros(n)
    track_score = np.zeros(n)
    track_id: list[Any] = [None] * n
    for i, box in enumerate(boxes):
        key = f"{what}[{token!r}][{i}]"
        try:
            if not isinstance(box, Mapping):
                raise ValueError(f"a box must be a dict, got {type(box).__name__}")
            names[i] = str(_required(box, "detection_name"))
            translation = _floats(_required(box, "translation"), 3, "translation")
            xy[i] = translation[:2]
            size[i] = _floats(_required(box, "size"), 3, "size")
            if not np.all(size[i] > 0):
                raise ValueError(f"size must be > 0 in every dimension, got {size[i].tolist()}")
            if "rotation" in box:
                yaw[i] = quaternion_to_yaw(_floats(box["rotation"], 4, "rotation"))
            elif not is_prediction and "yaw" in box:
                yaw[i] = _floats([box["yaw"]], 1, "yaw")[0]
            else:
                raise ValueError("missing 'rotation'" + ("" if is_prediction else " (or 'yaw')"))
            if "velocity" in box and box["velocity"] is not None:
                vel = np.asarray(box["velocity"], dtype=np.float64).reshape(-1)
                if vel.size < 2:
                    raise ValueError("'velocity' needs at least [vx, vy]")
                velocity[i] = vel[:2]
                if is_prediction and not np.all(np.isfinite(velocity[i])):
                    raise ValueError("predicted 'velocity' must be finite")
            elif is_prediction:
                raise ValueError("missing 'velocity'")
            if is_prediction:
                score[i] = _floats([_required(box, "detection_score")], 1, "detection_score")[0]
                if "tracking_score" in box and box["tracking_score"] is not None:
                    track_score[i] = _floats([box["tracking_score"]], 1, "tracking_score")[0]
                else:
                    track_score[i] = score[i]
                track_id[i] = box.get("tracking_id")
            else:
                track_id[i] = box.get("instance_id", box.get("tracking_id"))
        except (ValueError, TypeError) as exc:
            raise DataError(str(exc), key=key, hint="see sparse4d.metrics.boxes for the box format") from exc
    return SampleBoxes(names.astype(str) if n else np.zeros(0, dtype=str), xy, size, yaw, velocity, score,
                       track_score, track_id)


def parse_all(
    gt: BoxesBySample,
    pred: BoxesBySample,
    classes: Sequence[str],
    class_range: Mapping[str, float] | None,
    max_boxes_per_sample: int,
) -> tuple[dict[str, SampleBoxes], dict[str, SampleBoxes]]:
    """Validate both inputs, drop boxes outside their class range, keep ground truth of ``classes`` only.

    Rules (shared by detection and tracking):
    - a prediction for a sample the ground truth does not list is an error (wrong results file);
    - a ground-truth sample without predictions counts as a sample where nothing was predicted;
    - a prediction of a class outside ``classes`` is an error; ground truth of other classes is ignored;
    - more than ``max_boxes_per_sample`` predictions in one sample is an error (the devkit's rule).
    """
    if not isinstance(gt, Mapping):
        raise DataError("ground truth must map sample_token -> list of boxes", key="gt")
    if not isinstance(pred, Mapping):
        raise DataError("predictions must map sample_token -> list of boxes", key="results",
                        hint="the nuScenes results file's 'results' entry")
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"classes must be a non-empty list of distinct names, got {list(classes)}", key="classes")
    if class_range is not None:
        missing = [c for c in classes if c not in class_range]
        if missing:
            raise DataError(f"no range given for classes {missing}", key="class_range",
                            hint="give every evaluated class a maximum range in metres")
    unknown = [t for t in pred if t not in gt]
    if unknown:
        raise DataError(f"{len(unknown)} predicted sample tokens are not in the ground truth, e.g. {unknown[0]!r}",
                        key="results", hint="evaluate the results against the annotations of the same split")
    class_set = set(classes)
    gt_out: dict[str, SampleBoxes] = {}
    for token, boxes in gt.items():
        sample = parse_sample(token, boxes, is_prediction=False, what="gt")
        keep = np.array([n in class_set for n in sample.names], dtype=bool)
        sample = sample.select(keep)
        gt_out[token] = sample.select(sample.range_mask(class_range))
    pred_out: dict[str, SampleBoxes] = {}
    for token, boxes in pred.items():
        sample = parse_sample(token, boxes, is_prediction=True, what="results")
        if len(sample) > max_boxes_per_sample:
            raise DataError(f"{len(sample)} boxes in one sample, at most {max_boxes_per_sample} are scored",
                            key=f"results[{token!r}]",
                            hint="keep the best-scoring boxes (boxes_to_results(max_boxes=...) does)")
        bad = sorted({n for n in sample.names.tolist() if n not in class_set})
        if bad:
            raise DataError(f"predicted classes {bad} are not among the evaluated classes {list(classes)}",
                            key=f"results[{token!r}]")
        pred_out[token] = sample.select(sample.range_mask(class_range))
    return gt_out, pred_out


def _required(box: Mapping[str, Any], name: str) -> Any:
    if name not in box or box[name] is None:
        raise ValueError(f"missing {name!r}")
    return box[name]


def _floats(value: Any, count: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != count:
        raise ValueError(f"{name!r} needs {count} numbers, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name!r} must be finite, got {arr.tolist()}")
    return arr
