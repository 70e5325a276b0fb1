"""Model outputs -> nuScenes-format results, and annotations -> the evaluator's ground truth.

Every decoded query (the model's top `num_output`, at most 500) goes into the results, whatever its
score: the metrics need the whole precision/recall curve, so nothing is pre-filtered here. Queries the
instance bank did not give a track id (below the tracking threshold) get an id of their own, so the
tracking evaluator sees them as one-frame tracks instead of merging them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sparse4d.data.safe_pickle import safe_load
from sparse4d.metrics import MAX_BOXES_PER_SAMPLE, boxes_to_results, gt_from_boxes

DEFAULT_CLASS_RANGE = 40.0  # metres from the scene centre, AICity's class_config default


def results_from_decoded(decoded: dict[str, torch.Tensor], batch: dict[str, Any], classes: Sequence[str]) -> dict[str, list[dict]]:
    """One batch of `model.forward(...)["decoded"]` -> {sample_token: [result box, ...]}."""
    out: dict[str, list[dict]] = {}
    boxes = decoded["boxes_3d"].detach().float().cpu().numpy()
    scores = decoded["scores_3d"].detach().float().cpu().numpy()
    labels = decoded["labels_3d"].detach().cpu().numpy()
    track_ids = decoded["track_ids"].detach().cpu().numpy()
    for slot, token in enumerate(batch["sample_token"]):
        ids: list[Any] = []
        for row, tid in enumerate(track_ids[slot].tolist()):
            ids.append(int(tid) if tid >= 0 else f"untracked/{token}/{row}")
        names = [str(classes[int(label)]) for label in labels[slot]]
        out[str(token)] = boxes_to_results(boxes[slot], scores[slot], names, ids, max_boxes=MAX_BOXES_PER_SAMPLE)
    return out


def add_first(results: dict[str, list[dict]], new: dict[str, list[dict]]) -> None:
    """Merge keeping the first prediction of a sample (later ones are batch-filling repeats)."""
    for token, boxes in new.items():
        results.setdefault(token, boxes)


class Annotations:
    """Ground truth, frame order and class ranges of an evaluation split (from its OVPKL infos)."""

    def __init__(self, infos: Sequence[dict], classes: Sequence[str], *, use_valid_flag: bool = True,
                 class_range: dict[str, float] | None = None) -> None:
        self.classes = [str(c) for c in classes]
        self.gt: dict[str, list[dict]] = {}
        self.frames: dict[str, list[str]] = {}
        self.has_gt = any(info.get("has_gt") for info in infos)
        for info in sorted(infos, key=lambda i: (str(i["sequence_id"]), int(i["frame_index"]))):
            token = str(info["token"])
            self.frames.setdefault(str(info["sequence_id"]), []).append(token)
            if not info.get("has_gt"):
                self.gt[token] = []
                continue
            names = list(info["gt_names"])
            keep = np.asarray(info["valid_flag"], dtype=bool).reshape(-1) if use_valid_flag else np.ones(len(names), bool)
            keep &= np.array([n in self.classes for n in names], dtype=bool).reshape(keep.shape)
            boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 10)[keep]
            ids = [int(i) for i in np.asarray(info["gt_instance_ids"]).reshape(-1)[keep]]
            self.gt[token] = gt_from_boxes(boxes, [n for n, k in zip(names, keep) if k], ids)
        recorded = class_range or {}
        fallback = max(recorded.values()) if recorded else DEFAULT_CLASS_RANGE
        self.class_range = {c: float(recorded.get(c, fallback)) for c in self.classes}

    @classmethod
    def from_dataset(cls, dataset: Any, *, use_valid_flag: bool = True) -> Annotations:
        """Class ranges come from the pickles' metadata (`class_range`, written by dataset_convert)."""
        ranges: dict[str, float] = {}
        for path in dataset.files:
            payload = safe_load(path)
            meta = payload.get("metadata", {}) if isinstance(payload, dict) else {}
            for name, value in (meta.get("class_range") or {}).items():
                ranges[str(name)] = float(value)
        return cls(dataset.infos, dataset.classes, use_valid_flag=use_valid_flag, class_range=ranges)

    def tracking_frames(self) -> dict[str, list[str]]:
        return self.frames
