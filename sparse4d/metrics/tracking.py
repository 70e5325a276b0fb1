"""nuScenes-style 3D tracking metrics: AMOTA and AMOTP, plus MOTA, MOTP and IDF1 at one score threshold.

Follows the public definition of the nuScenes tracking benchmark (devkit ``eval/tracking``, config
``tracking_nips_2019``) and the CLEAR-MOT event rules of py-motmetrics, written from those definitions:

- Each prediction's ``tracking_score`` is replaced by the mean score of its track in its scene.
- Per class and frame (frames in the order the caller gives per scene), annotations and predictions
  are associated by ground-plane centre distance, pairs at ``>= 2 m`` forbidden: first every annotated
  object keeps the prediction id it was last matched to if that id is present and close enough, then
  the rest is assigned by minimum total distance (Hungarian, ``scipy.optimize.linear_sum_assignment``,
  most pairs first). A match whose object was last matched to another id is an identity switch.
- Score thresholds are chosen so that the matched predictions reach recall 0.1, 0.125, ..., 1 (40
  points; the scores of the matches found with all predictions, interpolated). At each threshold
  ``MOTAR = max(0, 1 - (IDS + FP + FN - (1 - r) P) / (r P))`` with P annotations and r the measured
  recall of plain matches; AMOTA is the mean MOTAR over the 40 points and AMOTP the mean MOTP, a recall
  never reached counting 0 for AMOTA and 2 m for AMOTP.
- MOTA (``max(0, 1 - (FN + IDS + FP) / P)``, clipped as in the devkit), MOTP, recall and the counts
  are reported at the threshold with the best MOTA (the lowest such threshold), or at
  ``score_threshold`` if the caller gives one. IDF1 (not in the devkit) is computed at the same
  threshold: identities matched one-to-one over each scene to maximise the frames where the pair is
  within 2 m (IDTP), ``IDF1 = 2 IDTP / (annotations + predictions)``.
- A class without annotations gets NaN and is left out of the class means; counts are summed.

Unlike the devkit, tracks are not interpolated over frames where an id is missing (our annotations
cover every frame).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse4d.errors import DataError
from sparse4d.metrics.boxes import MAX_BOXES_PER_SAMPLE, BoxesBySample, SampleBoxes, parse_all
from sparse4d.metrics.detection import _fmt, _json_safe, _nanmean

MATCH_DISTANCE = 2.0
MIN_RECALL = 0.1
NUM_THRESHOLDS = 40
WORST_MOTP = MATCH_DISTANCE  # devkit metric_worst: amotp / motp
SUMMED = ("tp", "fp", "fn", "ids", "gt")
REPORTED = ("amota", "amotp", "mota", "motp", "idf1", "recall", "motar", "tp", "fp", "fn", "ids", "gt", "threshold")


@dataclass
class _Frame:
    """One frame of one class: annotated ids/centres and predicted ids/centres/scores."""

    gt_ids: list[Any]
    gt_xy: np.ndarray
    pred_ids: list[Any]
    pred_xy: np.ndarray
    pred_score: np.ndarray


@dataclass
class _Counts:
    """CLEAR-MOT events of one pass over all scenes at one score threshold."""

    matches: int = 0
    switches: int = 0
    false_positives: int = 0
    misses: int = 0
    objects: int = 0
    predictions: int = 0
    distance_sum: float = 0.0
    id_true_positives: int = 0
    match_scores: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Per-threshold metrics, defined as in the devkit (NaN where a denominator is 0)."""
        p = self.objects
        r = self.matches / p if p else math.nan
        if p and self.matches:
            motar = max(0.0, 1.0 - (self.misses + self.switches + self.false_positives - (1.0 - r) * p) / (r * p))
        else:
            motar = math.nan
        detections = self.matches + self.switches
        return {
            "motar": motar,
            "mota": max(0.0, 1.0 - (self.misses + self.switches + self.false_positives) / p) if p else math.nan,
            "motp": self.distance_sum / detections if detections else math.nan,
            "recall": detections / p if p else math.nan,
            "tp": float(self.matches),
            "fp": float(self.false_positives),
            "fn": float(self.misses),
            "ids": float(self.switches),
            "gt": float(p),
            "idf1": 2.0 * self.id_true_positives / (p + self.predictions) if (p + self.predictions) else math.nan,
        }


def _assign(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment over allowed pairs, maximising the number of pairs first."""
    from scipy.optimize import linear_sum_assignment  # scipy only where tracking is evaluated

    if not allowed.any():
        return []
    finite = np.where(allowed, cost, 0.0)
    big = 1.0 + 2.0 * min(cost.shape) * float(np.abs(finite).max() + 1.0)
    rows, cols = linear_sum_assignment(np.where(allowed, cost, big))
    return [(int(i), int(j)) for i, j in zip(rows, cols) if allowed[i, j]]


def _run_scene(frames: Sequence[_Frame], threshold: float | None, counts: _Counts) -> None:
    """Feed one scene's frames through the CLEAR-MOT association, adding events to ``counts``."""
    last_match: dict[Any, Any] = {}  # annotated id -> prediction id it was last matched to
    together: dict[tuple[Any, Any], int] = defaultdict(int)  # frames where (object, prediction) are close
    for frame in frames:
        keep = np.ones(len(frame.pred_ids), dtype=bool) if threshold is None else frame.pred_score >= threshold
        pred_ids = [h for h, k in zip(frame.pred_ids, keep) if k]
        pred_xy = frame.pred_xy[keep]
        pred_score = frame.pred_score[keep]
        n_gt, n_pred = len(frame.gt_ids), len(pred_ids)
        counts.objects += n_gt
        counts.predictions += n_pred
        if n_gt == 0 or n_pred == 0:
            counts.misses += n_gt
            counts.false_positives += n_pred
            continue
        dist = np.linalg.norm(frame.gt_xy[:, None, :] - pred_xy[None, :, :], axis=2)
        allowed = dist < MATCH_DISTANCE
        for i, j in zip(*np.nonzero(allowed)):
            together[(frame.gt_ids[i], pred_ids[j])] += 1
        gt_used = np.zeros(n_gt, dtype=bool)
        pred_used = np.zeros(n_pred, dtype=bool)
        # 1. Keep established pairs that are still close enough.
        for i, o in enumerate(frame.gt_ids):
            if o not in last_match:
                continue
            j = next((j for j, h in enumerate(pred_ids) if not pred_used[j] and h == last_match[o]), None)
            if j is not None and allowed[i, j]:
                gt_used[i] = pred_used[j] = True
                counts.matches += 1
                counts.distance_sum += float(dist[i, j])
                counts.match_scores.append(float(pred_score[j]))
        # 2. Assign the rest by minimum total distance.
        free = allowed & ~gt_used[:, None] & ~pred_used[None, :]
        for i, j in _assign(dist, free):
            o, h = frame.gt_ids[i], pred_ids[j]
            if o in last_match and last_match[o] != h:
                counts.switches += 1
            else:
                counts.matches += 1
                counts.match_scores.append(float(pred_score[j]))
            counts.distance_sum += float(dist[i, j])
            last_match[o] = h
            gt_used[i] = pred_used[j] = True
        counts.misses += int((~gt_used).sum())
        counts.false_positives += int((~pred_used).sum())
    counts.id_true_positives += _identity_true_positives(together)


def _identity_true_positives(together: Mapping[tuple[Any, Any], int]) -> int:
    """Most frames covered by a one-to-one matching of annotated ids to predicted ids (IDTP)."""
    if not together:
        return 0
    objects = sorted({o for o, _ in together}, key=repr)
    hypotheses = sorted({h for _, h in together}, key=repr)
    oi = {o: i for i, o in enumerate(objects)}
    hi = {h: j for j, h in enumerate(hypotheses)}
    overlap = np.zeros((len(objects), len(hypotheses)))
    for (o, h), n in together.items():
        overlap[oi[o], hi[h]] = n
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(overlap, maximize=True)
    return int(overlap[rows, cols].sum())


def _run(scenes: Sequence[Sequence[_Frame]], threshold: float | None) -> _Counts:
    counts = _Counts()
    for frames in scenes:
        _run_scene(frames, threshold, counts)
    return counts


def recall_thresholds(match_scores: Sequence[float], num_gt: int, num_thresholds: int = NUM_THRESHOLDS,
                      min_recall: float = MIN_RECALL) -> list[float]:
    """Score thresholds for recall min_recall..1, lowest recall last; NaN where a recall is not reached.

    The returned list runs from recall 1 (lowest threshold) to ``min_recall`` (highest), as the devkit's.
    """
    if len(match_scores) == 0:
        return [math.nan] * num_thresholds
    scores = np.sort(np.asarray(match_scores, dtype=np.float64))[::-1]
    recall = np.arange(1, len(scores) + 1) / float(num_gt)
    targets = np.linspace(min_recall, 1.0, num_thresholds).round(12)
    thresholds = np.interp(targets, recall, scores, right=0)
    thresholds[targets > recall.max()] = np.nan
    return thresholds[::-1].tolist()


def evaluate_class(scenes: Sequence[Sequence[_Frame]], num_gt: int, score_threshold: float | None = None,
                   num_thresholds: int = NUM_THRESHOLDS) -> dict[str, float]:
    """All tracking metrics of one class (NaN everywhere when it has no annotation)."""
    if num_gt == 0:
        return {k: math.nan for k in REPORTED}
    thresholds = recall_thresholds(_run(scenes, None).match_scores, num_gt, num_thresholds)
    per_threshold: dict[float, dict[str, float]] = {}
    for t in thresholds:
        if not math.isnan(t) and t not in per_threshold:
            per_threshold[t] = _run(scenes, t).summary()
    motar = [per_threshold[t]["motar"] if not math.isnan(t) else math.nan for t in thresholds]
    motp = [per_threshold[t]["motp"] if not math.isnan(t) else math.nan for t in thresholds]
    result = {
        "amota": float(np.mean([0.0 if math.isnan(v) else v for v in motar])),
        "amotp": float(np.mean([WORST_MOTP if math.isnan(v) else v for v in motp])),
    }
    if score_threshold is not None:
        chosen: dict[str, float] | None = _run(scenes, score_threshold).summary()
        chosen_threshold = float(score_threshold)
    else:
        mota = [per_threshold[t]["mota"] if not math.isnan(t) else math.nan for t in thresholds]
        valid = [i for i, v in enumerate(mota) if not math.isnan(v)]
        if valid:
            best = max(valid, key=lambda i: (mota[i], -i))  # first index of the best MOTA = lowest threshold
            chosen_threshold = thresholds[best]
            chosen = per_threshold[chosen_threshold]
        else:
            chosen, chosen_threshold = None, math.nan
    if chosen is None:  # no recall point reached: the devkit's worst values
        chosen = {"motar": 0.0, "mota": 0.0, "motp": WORST_MOTP, "recall": 0.0, "tp": 0.0, "fp": math.nan,
                  "fn": float(num_gt), "ids": math.nan, "gt": float(num_gt), "idf1": 0.0}
    result.update(chosen)
    result["threshold"] = chosen_threshold
    return result


@dataclass
class TrackingMetrics:
    """Result of :func:`evaluate_tracking`: class means (counts summed) and the per-class values."""

    classes: list[str]
    amota: float
    amotp: float
    mota: float
    motp: float
    idf1: float
    recall: float
    tp: float
    fp: float
    fn: float
    ids: float
    class_metrics: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary; NaN becomes None."""
        return _json_safe(
            {
                "AMOTA": self.amota, "AMOTP": self.amotp, "MOTA": self.mota, "MOTP": self.motp,
                "IDF1": self.idf1, "recall": self.recall, "TP": self.tp, "FP": self.fp, "FN": self.fn,
                "IDS": self.ids, "class_metrics": self.class_metrics, "classes": self.classes,
            }
        )

    def format_table(self) -> str:
        """Per-class table followed by the summary line."""
        cols = ["amota", "amotp", "mota", "motp", "idf1", "recall", "gt", "tp", "fp", "fn", "ids", "threshold"]
        header = ["class", *[c.upper() if c not in ("recall", "threshold") else c for c in cols]]

        def cell(key: str, value: float) -> str:
            if key in SUMMED:
                return "nan" if math.isnan(value) else str(int(value))
            return _fmt(value, 3)

        rows = [[c, *[cell(k, self.class_metrics[c][k]) for k in cols]] for c in self.classes]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        lines.append(
            f"AMOTA: {_fmt(self.amota, 3)}  AMOTP: {_fmt(self.amotp, 3)}  MOTA: {_fmt(self.mota, 3)}  "
            f"MOTP: {_fmt(self.motp, 3)}  IDF1: {_fmt(self.idf1, 3)}  recall: {_fmt(self.recall, 3)}  "
            f"IDS: {cell('ids', self.ids)}"
        )
        return "\n".join(lines)


def evaluate_tracking(
    gt: BoxesBySample,
    pred: BoxesBySample,
    frames: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    class_range: Mapping[str, float] | None = None,
    *,
    score_threshold: float | None = None,
    max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
    num_thresholds: int = NUM_THRESHOLDS,
) -> TrackingMetrics:
    """Score tracks the nuScenes way (see the module docstring).

    ``gt`` and ``pred`` are as for :func:`sparse4d.metrics.detection.evaluate_detection`; annotations
    need ``instance_id`` (track id, unique within a scene) and predictions ``tracking_id`` and
    ``tracking_score``. ``frames``: scene -> its sample tokens in time order; every annotated sample
    must belong to exactly one scene. ``score_threshold``: report MOTA/MOTP/IDF1/counts at this
    tracking score instead of at the best-MOTA threshold (AMOTA/AMOTP are unaffected).
    """
    classes = [str(c) for c in classes]
    gt_samples, pred_samples = parse_all(gt, pred, classes, class_range, max_boxes_per_sample)
    scene_of: dict[str, str] = {}
    for scene, tokens in frames.items():
        for token in tokens:
            if token in scene_of:
                raise DataError(f"sample {token!r} is listed in scenes {scene_of[token]!r} and {scene!r}",
                                key="frames")
            if token not in gt_samples:
                raise DataError(f"scene {scene!r} lists sample {token!r}, which the ground truth does not have",
                                key="frames")
            scene_of[token] = scene
    unplaced = [t for t in gt_samples if t not in scene_of]
    if unplaced:
        raise DataError(f"{len(unplaced)} annotated samples belong to no scene, e.g. {unplaced[0]!r}", key="frames",
                        hint="list every sample token under its scene, in time order")
    for what, samples, field_name in (("gt", gt_samples, "instance_id"), ("results", pred_samples, "tracking_id")):
        for token, sample in samples.items():
            if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in sample.track_id):
                raise DataError(f"every box needs {field_name!r} (a string or an integer)", key=f"{what}[{token!r}]")

    track_scores = _mean_track_scores(frames, pred_samples)
    class_metrics: dict[str, dict[str, float]] = {}
    for c in classes:
        scenes = []
        num_gt = 0
        for scene, tokens in frames.items():
            scene_frames = []
            for token in tokens:
                g = _of_class(gt_samples[token], c)
                p = _of_class(pred_samples.get(token), c)
                num_gt += len(g)
                scores = np.array([track_scores[(scene, h)] for h in p.track_id], dtype=np.float64)
                scene_frames.append(_Frame(list(g.track_id), g.xy, list(p.track_id), p.xy, scores))
            scenes.append(scene_frames)
        class_metrics[c] = evaluate_class(scenes, num_gt, score_threshold, num_thresholds)

    def mean(key: str) -> float:
        return _nanmean([class_metrics[c][key] for c in classes])

    def total(key: str) -> float:
        values = [class_metrics[c][key] for c in classes if not math.isnan(class_metrics[c][key])]
        return float(sum(values)) if values else math.nan

    return TrackingMetrics(
        classes=classes, amota=mean("amota"), amotp=mean("amotp"), mota=mean("mota"), motp=mean("motp"),
        idf1=mean("idf1"), recall=mean("recall"), tp=total("tp"), fp=total("fp"), fn=total("fn"),
        ids=total("ids"), class_metrics=class_metrics,
    )


def _of_class(sample: SampleBoxes | None, class_name: str) -> SampleBoxes:
    if sample is None:
        return SampleBoxes(np.zeros(0, dtype=str), np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0),
                           np.zeros((0, 2)), np.zeros(0), np.zeros(0), [])
    return sample.select(sample.names == class_name)


def _mean_track_scores(frames: Mapping[str, Sequence[str]], pred: Mapping[str, SampleBoxes]) -> dict[tuple[str, Any], float]:
    """(scene, tracking_id) -> mean tracking score of that track over the scene (the devkit's track score)."""
    sums: dict[tuple[str, Any], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for scene, tokens in frames.items():
        for token in tokens:
            sample = pred.get(token)
            if sample is None:
                continue
            for h, s in zip(sample.track_id, sample.track_score.tolist()):
                acc = sums[(scene, h)]
                acc[0] += s
                acc[1] += 1.0
    return {key: total / count for key, (total, count) in sums.items()}
