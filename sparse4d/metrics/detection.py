"""nuScenes-style 3D detection metrics: mAP over centre-distance thresholds, TP errors and NDS.

Follows the public definition of the nuScenes detection benchmark (devkit ``eval/detection``, config
``detection_cvpr_2019``), written from that definition:

- A prediction matches the closest untaken annotation of its class in its sample if the ground-plane
  centre distance is ``< threshold``; predictions are taken greedily by descending score over the whole
  split (ties: the later box first, as the devkit's sort does). Thresholds 0.5, 1, 2, 4 m.
- Precision/recall are sampled at 101 recall points (linear interpolation, precision 0 beyond the
  recall reached). AP drops the points at recall <= ``min_recall`` (0.1), subtracts ``min_precision``
  (0.1), clips at 0 and renormalises by ``1 - min_precision``.
- TP errors use the matches at 2 m: translation (ATE, ground-plane centre distance), scale
  (ASE, 1 - IoU of the boxes aligned in centre and heading), orientation (AOE, smallest yaw difference,
  in [0, pi]) and velocity (AVE, ground-plane velocity difference). Each is the running mean over the
  matches up to a score, sampled at the recall points in (min_recall, max recall reached]; a class that
  never reaches more than ``min_recall`` gets error 1.
- ``NDS = (5 * mAP + sum_k (1 - min(1, mTP_k))) / (5 + K)`` over the K TP errors that apply.

Differences from the devkit, all deliberate:

- The attribute error does not exist for our datasets, so it is not computed and not counted in NDS:
  the devkit's ``/10`` becomes ``/9`` (5 for mAP plus 4 errors). Keeping ``/10`` would cap a perfect
  detector at NDS 0.9. More generally K is the number of TP errors that apply to at least one evaluated
  class (see ``tp_not_applicable``).
- A class without any annotation (after the range filter) gets AP and TP errors NaN and is left out
  of the means, so a class that does not occur in a split does not count as a failure. The current
  devkit scores such a class AP 0 / errors 1; pass ``score_classes_without_gt=True`` for that.
- The range filter measures the distance of the box centre from the origin of the (recentered) scene
  frame, not from the ego vehicle, and there is no lidar-point or bike-rack filter.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse4d.metrics.boxes import MAX_BOXES_PER_SAMPLE, BoxesBySample, SampleBoxes, parse_all

DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
TP_DIST_THRESHOLD = 2.0
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
MEAN_AP_WEIGHT = 5.0
RECALL_POINTS = 101
TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err")
TP_METRIC_LABELS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE"}


@dataclass
class CurveData:
    """Precision, score and running-mean TP errors of one class at one threshold, at 101 recall points."""

    precision: np.ndarray
    confidence: np.ndarray
    errors: dict[str, np.ndarray]

    @classmethod
    def no_predictions(cls) -> CurveData:
        """What the devkit uses when nothing matched: precision 0 everywhere, errors 1."""
        zeros = np.zeros(RECALL_POINTS)
        return cls(zeros.copy(), zeros.copy(), {m: np.ones(RECALL_POINTS) for m in TP_METRICS})

    @property
    def max_recall_index(self) -> int:
        """Index of the highest recall point reached (the last point with a non-zero score)."""
        nonzero = np.flatnonzero(self.confidence)
        return int(nonzero[-1]) if len(nonzero) else 0


@dataclass
class _ClassBoxes:
    """All boxes of one class over the split, concatenated in input order, with their sample index."""

    sample: np.ndarray
    xy: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray
    score: np.ndarray


def _gather(samples: Sequence[SampleBoxes], sample_ids: Sequence[int], class_name: str) -> _ClassBoxes:
    parts = [(sid, s.select(s.names == class_name)) for sid, s in zip(sample_ids, samples)]
    parts = [(sid, s) for sid, s in parts if len(s)]
    if not parts:
        return _ClassBoxes(np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)),
                           np.zeros(0))
    return _ClassBoxes(
        np.concatenate([np.full(len(s), sid) for sid, s in parts]),
        np.concatenate([s.xy for _, s in parts]),
        np.concatenate([s.size for _, s in parts]),
        np.concatenate([s.yaw for _, s in parts]),
        np.concatenate([s.velocity for _, s in parts]),
        np.concatenate([s.score for _, s in parts]),
    )


def _yaw_difference(a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    """Smallest absolute difference between headings, for headings defined modulo ``period``."""
    diff = np.mod(a - b + period / 2.0, period) - period / 2.0
    diff = np.where(diff > math.pi, diff - 2.0 * math.pi, diff)
    return np.abs(diff)


def _aligned_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given by their sizes (n, 3) when centres and headings coincide."""
    inter = np.prod(np.minimum(a, b), axis=1)
    return inter / (np.prod(a, axis=1) + np.prod(b, axis=1) - inter)


def _greedy_match(pred: _ClassBoxes, gt: _ClassBoxes, order: np.ndarray, threshold: float) -> np.ndarray:
    """For predictions in ``order``, the index into ``gt`` each one matched, or -1.

    Greedy matching never looks across samples, so each sample is matched on its own (same result
    as one pass over the whole split in score order).
    """
    matched = np.full(len(order), -1, dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    for sid in np.unique(pred.sample):
        gt_idx = np.flatnonzero(gt.sample == sid)
        if len(gt_idx) == 0:
            continue
        pred_idx = np.flatnonzero(pred.sample == sid)
        pred_idx = pred_idx[np.argsort(rank[pred_idx])]
        dist = np.linalg.norm(pred.xy[pred_idx, None, :] - gt.xy[None, gt_idx, :], axis=2)
        taken = np.zeros(len(gt_idx), dtype=bool)
        for row, p in enumerate(pred_idx):
            candidates = np.where(taken, np.inf, dist[row])
            best = int(np.argmin(candidates))  # first of equal distances, like the devkit
            if candidates[best] < threshold:
                taken[best] = True
                matched[rank[p]] = gt_idx[best]
    return matched


def _cumulative_mean(values: np.ndarray) -> np.ndarray:
    """Running mean ignoring NaN (all NaN -> ones, as the devkit treats unknown errors as 1)."""
    valid = ~np.isnan(values)
    if not valid.any():
        return np.ones(len(values))
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def accumulate_class(
    pred: _ClassBoxes, gt: _ClassBoxes, threshold: float, orientation_period: float = 2.0 * math.pi
) -> CurveData | None:
    """Curves of one class at one distance threshold; ``None`` when the class has no annotation."""
    num_gt = len(gt.score)
    if num_gt == 0:
        return None
    # Descending score; equal scores: later box first (the devkit reverses an ascending (score, index) sort).
    order = np.argsort(pred.score, kind="stable")[::-1]
    matched = _greedy_match(pred, gt, order, threshold)
    is_tp = matched >= 0
    if not is_tp.any():
        return CurveData.no_predictions()

    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    scores = pred.score[order]
    precision = tp / (tp + fp)
    recall = tp / float(num_gt)
    recall_points = np.linspace(0.0, 1.0, RECALL_POINTS)
    precision_at = np.interp(recall_points, recall, precision, right=0)
    confidence_at = np.interp(recall_points, recall, scores, right=0)

    p = order[is_tp]
    g = matched[is_tp]
    match_scores = scores[is_tp]
    raw = {
        "trans_err": np.linalg.norm(pred.xy[p] - gt.xy[g], axis=1),
        "scale_err": 1.0 - _aligned_iou(gt.size[g], pred.size[p]),
        "orient_err": _yaw_difference(gt.yaw[g], pred.yaw[p], orientation_period),
        "vel_err": np.linalg.norm(pred.velocity[p] - gt.velocity[g], axis=1),
    }
    # Running means indexed by match; resample them at the score reached at each recall point
    # (np.interp needs increasing x, hence the reversals).
    errors = {
        name: np.interp(confidence_at[::-1], match_scores[::-1], _cumulative_mean(values)[::-1])[::-1]
        for name, values in raw.items()
    }
    return CurveData(precision_at, confidence_at, errors)


def average_precision(curve: CurveData, min_recall: float = MIN_RECALL, min_precision: float = MIN_PRECISION) -> float:
    """Mean of (precision - min_precision)+ over recall points above ``min_recall``, rescaled to [0, 1]."""
    kept = curve.precision[round(100 * min_recall) + 1:] - min_precision
    return float(np.mean(np.clip(kept, 0.0, None))) / (1.0 - min_precision)


def tp_error(curve: CurveData, metric: str, min_recall: float = MIN_RECALL) -> float:
    """Mean of a running TP error over the recall points in (min_recall, max recall reached]."""
    first = round(100 * min_recall) + 1
    last = curve.max_recall_index
    if last < first:
        return 1.0
    return float(np.mean(curve.errors[metric][first:last + 1]))


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


@dataclass
class DetectionMetrics:
    """Result of :func:`evaluate_detection`. NaN marks values that are undefined (class without GT)."""

    classes: list[str]
    mAP: float
    NDS: float
    class_ap: dict[str, dict[float, float]]  # class -> threshold (m) -> AP
    class_mean_ap: dict[str, float]  # class -> AP averaged over thresholds
    class_tp_errors: dict[str, dict[str, float]]  # class -> TP metric -> error
    tp_errors: dict[str, float]  # TP metric -> mean over classes (NaN if it applies to none)
    tp_scores: dict[str, float]  # TP metric -> 1 - min(1, error), for the metrics counted in NDS
    num_gt: dict[str, int] = field(default_factory=dict)
    num_pred: dict[str, int] = field(default_factory=dict)
    dist_thresholds: tuple[float, ...] = DIST_THRESHOLDS

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: NaN/inf become None; threshold keys become strings like '0.5'."""
        return _json_safe(
            {
                "mAP": self.mAP,
                "NDS": self.NDS,
                **{TP_METRIC_LABELS[m]: v for m, v in self.tp_errors.items()},
                "tp_errors": self.tp_errors,
                "tp_scores": self.tp_scores,
                "class_ap": {c: {str(t): ap for t, ap in d.items()} for c, d in self.class_ap.items()},
                "class_mean_ap": self.class_mean_ap,
                "class_tp_errors": self.class_tp_errors,
                "num_gt": self.num_gt,
                "num_pred": self.num_pred,
                "classes": self.classes,
                "dist_thresholds": list(self.dist_thresholds),
            }
        )

    def format_table(self) -> str:
        """Per-class table (AP per threshold, mean AP, TP errors) followed by the summary lines."""
        thr_cols = [f"AP@{t:g}" for t in self.dist_thresholds]
        err_cols = [TP_METRIC_LABELS[m][1:] for m in TP_METRICS]
        header = ["class", "GT", "pred", *thr_cols, "AP", *err_cols]
        rows = []
        for c in self.classes:
            rows.append([c, str(self.num_gt.get(c, 0)), str(self.num_pred.get(c, 0)),
                         *[_fmt(self.class_ap[c][t]) for t in self.dist_thresholds],
                         _fmt(self.class_mean_ap[c]),
                         *[_fmt(self.class_tp_errors[c][m]) for m in TP_METRICS]])
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        lines.append(f"mAP: {_fmt(self.mAP)}")
        lines += [f"{TP_METRIC_LABELS[m]}: {_fmt(self.tp_errors[m])}" for m in TP_METRICS]
        lines.append(f"NDS: {_fmt(self.NDS)}")
        return "\n".join(lines)


def evaluate_detection(
    gt: BoxesBySample,
    pred: BoxesBySample,
    classes: Sequence[str],
    class_range: Mapping[str, float] | None = None,
    *,
    tp_not_applicable: Mapping[str, Collection[str]] | None = None,
    orientation_period: Mapping[str, float] | None = None,
    score_classes_without_gt: bool = False,
    max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
) -> DetectionMetrics:
    """Score predictions against annotations the nuScenes way (see the module docstring).

    ``gt``: ``{sample_token: [box, ...]}`` with boxes ``{"translation": [x, y, z], "size": [w, l, h],
    "rotation": [qw, qx, qy, qz]`` (or ``"yaw"``), ``"velocity": [vx, vy]`` (NaN allowed),
    ``"detection_name": str, "instance_id": ...}`` (see :func:`gt_from_boxes`). Every evaluated sample
    must be a key, also those without boxes.

    ``pred``: the nuScenes result format, ``{sample_token: [{"translation", "size", "rotation",
    "velocity", "detection_name", "detection_score", "tracking_id", "tracking_score"}, ...]}`` (see
    :func:`boxes_to_results`). All predictions are scored, whatever their score; a sample may hold at
    most ``max_boxes_per_sample``; a sample missing here counts as one without predictions.

    ``class_range``: class -> maximum distance (m) of the box centre from the scene origin; boxes at or
    beyond it are ignored, annotations and predictions alike. ``None``: no range filter.
    ``tp_not_applicable``: class -> TP metric names (``trans_err``, ``scale_err``, ``orient_err``,
    ``vel_err``) that make no sense for it (NaN for that class, as the devkit does for cones).
    ``orientation_period``: class -> period of its heading (``math.pi`` for front/back-symmetric
    objects, as the devkit does for barriers); default 2*pi.
    """
    classes = [str(c) for c in classes]
    gt_samples, pred_samples = parse_all(gt, pred, classes, class_range, max_boxes_per_sample)
    for c, metrics in (tp_not_applicable or {}).items():
        unknown = set(metrics) - set(TP_METRICS)
        if unknown:
            raise ValueError(f"tp_not_applicable[{c!r}]: unknown TP metrics {sorted(unknown)}; use {TP_METRICS}")

    tokens = list(gt_samples)
    sample_id = {t: i for i, t in enumerate(tokens)}
    # Predictions keep the order of the results dict (it decides ties, as in the devkit).
    pred_tokens = list(pred_samples)
    pred_list = [pred_samples[t] for t in pred_tokens]
    pred_ids = [sample_id[t] for t in pred_tokens]

    class_ap: dict[str, dict[float, float]] = {}
    class_mean_ap: dict[str, float] = {}
    class_tp_errors: dict[str, dict[str, float]] = {}
    num_gt: dict[str, int] = {}
    num_pred: dict[str, int] = {}
    for c in classes:
        gt_c = _gather([gt_samples[t] for t in tokens], range(len(tokens)), c)
        pred_c = _gather(pred_list, pred_ids, c)
        num_gt[c] = len(gt_c.score)
        num_pred[c] = len(pred_c.score)
        period = float((orientation_period or {}).get(c, 2.0 * math.pi))
        curves = {t: accumulate_class(pred_c, gt_c, t, period) for t in DIST_THRESHOLDS}
        if num_gt[c] == 0 and not score_classes_without_gt:
            class_ap[c] = {t: math.nan for t in DIST_THRESHOLDS}
            class_tp_errors[c] = {m: math.nan for m in TP_METRICS}
        else:
            curves = {t: cur if cur is not None else CurveData.no_predictions() for t, cur in curves.items()}
            class_ap[c] = {t: average_precision(cur) for t, cur in curves.items()}
            skip = set((tp_not_applicable or {}).get(c, ()))
            tp_curve = curves[TP_DIST_THRESHOLD]
            class_tp_errors[c] = {m: (math.nan if m in skip else tp_error(tp_curve, m)) for m in TP_METRICS}
        class_mean_ap[c] = _nanmean(list(class_ap[c].values())) if num_gt[c] or score_classes_without_gt else math.nan

    mean_ap = _nanmean([class_mean_ap[c] for c in classes])
    tp_errors = {m: _nanmean([class_tp_errors[c][m] for c in classes]) for m in TP_METRICS}
    tp_scores = {m: max(0.0, 1.0 - e) for m, e in tp_errors.items() if not math.isnan(e)}
    if math.isnan(mean_ap):
        nds = math.nan
    else:
        nds = (MEAN_AP_WEIGHT * mean_ap + sum(tp_scores.values())) / (MEAN_AP_WEIGHT + len(tp_scores))
    return DetectionMetrics(
        classes=classes, mAP=mean_ap, NDS=nds, class_ap=class_ap, class_mean_ap=class_mean_ap,
        class_tp_errors=class_tp_errors, tp_errors=tp_errors, tp_scores=tp_scores, num_gt=num_gt,
        num_pred=num_pred,
    )
