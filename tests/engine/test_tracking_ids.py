"""Track ids from decoded model outputs to the tracking metrics: what the evaluator sees per id rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.engine.predictions import Annotations, add_first, results_from_decoded
from sparse4d.engine.scoring import score_results

CLASSES = ["person", "nova_carter"]
FRAMES = 20


def _scene():
    """Two objects moving 0.2 m per frame for FRAMES frames; returns infos and their per-frame boxes."""
    infos, boxes = [], []
    for f in range(FRAMES):
        frame_boxes = np.array([[0.2 * f, 0.0, 0.5, 0.5, 0.5, 1.7, 0.0, 6.0, 0.0, 0.0],
                                [0.0, 3.0 + 0.2 * f, 0.4, 1.0, 0.7, 0.8, 1.57, 0.0, 6.0, 0.0]])
        boxes.append(frame_boxes)
        infos.append({"token": f"s/{f}", "sequence_id": "s", "frame_index": f, "has_gt": True,
                      "gt_names": np.array(CLASSES), "valid_flag": np.array([True, True]),
                      "gt_boxes": frame_boxes, "gt_instance_ids": np.array([11, 12])})
    return infos, boxes


def _results(boxes, ids_of_frame):
    """Decoded outputs (plus one low-score distractor row) for each frame, through results_from_decoded."""
    results: dict[str, list[dict]] = {}
    for f, frame_boxes in enumerate(boxes):
        rows = np.concatenate([frame_boxes, [[20.0, 20.0, 0.5, 1, 1, 1, 0, 0, 0, 0]]])
        decoded = {"boxes_3d": torch.tensor(rows[None], dtype=torch.float32),
                   "scores_3d": torch.tensor([[0.9, 0.8, 0.05]]),
                   "labels_3d": torch.tensor([[0, 1, 0]]),
                   "track_ids": torch.tensor([ids_of_frame(f) + [-1]])}
        add_first(results, results_from_decoded(decoded, {"sample_token": [f"s/{f}"]}, CLASSES))
    return results


def test_ids_kept_by_the_instance_bank_score_amota_1():
    infos, boxes = _scene()
    annotations = Annotations(infos, CLASSES)
    results = _results(boxes, lambda f: [0, 1])
    assert [b["tracking_id"] for b in results["s/7"]][:2] == [0, 1]
    assert str(results["s/7"][2]["tracking_id"]).startswith("untracked/")  # below the tracking threshold
    trk = score_results(results, annotations, ("tracking",))["tracking"]
    assert trk.amota == pytest.approx(1.0) and trk.mota == pytest.approx(1.0) and trk.idf1 == pytest.approx(1.0)
    assert trk.ids == 0


def test_ids_reborn_every_frame_score_amota_0():
    # The failure mode measured on the small model: every confident box gets a fresh id each frame.
    infos, boxes = _scene()
    annotations = Annotations(infos, CLASSES)
    results = _results(boxes, lambda f: [2 * f, 2 * f + 1])
    scored = score_results(results, annotations, ("detection", "tracking"))
    assert scored["detection"].mAP > 0.99  # the boxes are perfect: only the ids fail
    assert scored["tracking"].amota == 0.0


def test_untracked_rows_never_share_an_id_across_frames():
    infos, boxes = _scene()
    results = _results(boxes, lambda f: [-1, -1])
    ids = [b["tracking_id"] for token in results for b in results[token]]
    assert len(ids) == len(set(ids)) == 3 * FRAMES
