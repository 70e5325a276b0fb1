"""Evaluate and inference on the tiny trained model: results format, metrics files, pictures."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest

from .conftest import make_spec, tiny_overrides
from sparse4d.data.safe_pickle import safe_load
from sparse4d.engine.evaluate import METRICS_NAME, RESULTS_NAME, run_evaluate
from sparse4d.engine.inference import run_inference
from sparse4d.errors import DataError
from sparse4d.jobs.status_file import read_events

BOX_KEYS = {"translation", "size", "rotation", "velocity", "detection_name", "detection_score", "tracking_id", "tracking_score"}
CLASSES = ["person", "gr1_t2", "agility_digit", "nova_carter"]


def _eval_spec(converted, results: Path, checkpoint: str, **extra):
    values = tiny_overrides(converted, results, **{"evaluate.checkpoint": checkpoint, "dataset.data_root": str(converted["root"] / "val"), **extra})
    return make_spec("evaluate", {k: v for k, v in values.items() if not k.startswith("train.")})


def test_evaluate_writes_results_and_metrics(trained: Path, converted, tmp_path: Path, capsys) -> None:
    spec = _eval_spec(converted, tmp_path, str(trained / "model_epoch_002_step_00008.pth"),
                      **{"evaluate.metrics": ["detection", "tracking"]})
    values = run_evaluate(spec)
    document = json.loads((tmp_path / RESULTS_NAME).read_text())
    infos = safe_load(converted["val"])["infos"]
    assert set(document["meta"]) >= {"use_camera", "use_lidar"}
    assert list(document["results"]) == [info["token"] for info in infos]  # every frame once, in order
    for boxes in document["results"].values():
        assert len(boxes) == 16  # all num_output queries, not filtered by score
        scores = [b["detection_score"] for b in boxes]
        assert scores == sorted(scores, reverse=True)
        for box in boxes:
            assert set(box) == BOX_KEYS
            assert len(box["translation"]) == 3 and len(box["size"]) == 3 and len(box["rotation"]) == 4 and len(box["velocity"]) == 2
            assert box["detection_name"] in CLASSES
            assert math.isclose(sum(q * q for q in box["rotation"]), 1.0, rel_tol=1e-6)
    metrics = json.loads((tmp_path / METRICS_NAME).read_text())
    assert set(metrics) == {"detection", "tracking"}
    assert set(metrics["detection"]["class_ap"]) == set(CLASSES)
    assert {"val_mAP", "mAP", "img_bbox_NuScenes/mAP", "NDS", "AMOTA", "AMOTP", "MOTA", "IDF1"} <= set(values)
    assert values["mAP"] == metrics["detection"]["mAP"]
    out = capsys.readouterr().out
    assert "AP@0.5" in out and "AMOTA" in out  # per-class tables printed
    assert read_events(tmp_path / "status.json")[-1]["kpi"]["mAP"] == values["mAP"]

    # The saved results file can be scored on its own, with the same numbers.
    again = tmp_path / "again"
    rescored = run_evaluate(_eval_spec(converted, again, str(tmp_path / RESULTS_NAME), **{"evaluate.metrics": ["detection", "tracking"]}))
    assert rescored["mAP"] == values["mAP"] and rescored["AMOTA"] == values["AMOTA"]
    assert not (again / RESULTS_NAME).exists()


def test_perfect_results_file_scores_one(converted, tmp_path: Path) -> None:
    from sparse4d.engine.predictions import Annotations

    infos = safe_load(converted["val"])["infos"]
    annotations = Annotations(infos, CLASSES)
    results = {token: [dict(box, detection_score=0.9, tracking_id=box["instance_id"], tracking_score=0.9) for box in boxes]
               for token, boxes in annotations.gt.items()}
    for boxes in results.values():
        for box in boxes:
            box.pop("instance_id")
            box["velocity"] = [0.0 if math.isnan(v) else v for v in box["velocity"]]
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps({"meta": {}, "results": results}))
    values = run_evaluate(_eval_spec(converted, tmp_path / "out", str(path), **{"evaluate.metrics": ["detection", "tracking"]}))
    assert values["mAP"] == pytest.approx(1.0) and values["AMOTA"] == pytest.approx(1.0)
    path.write_text(json.dumps({"results": []}))
    with pytest.raises(DataError, match="results file"):
        run_evaluate(_eval_spec(converted, tmp_path / "bad", str(path)))


def test_inference_writes_results_and_pictures(trained: Path, converted, tmp_path: Path) -> None:
    values = tiny_overrides(converted, tmp_path, **{"inference.checkpoint": str(trained / "model_latest.pth"),
                                                    "inference.jsonfile_prefix": "preds", "visualize.vis_score_threshold": 0.0,
                                                    "dataset.data_root": str(converted["root"] / "val")})
    spec = make_spec("inference", {k: v for k, v in values.items() if not k.startswith("train.")})
    path = run_inference(spec)
    assert path == tmp_path / "preds.json"
    results = json.loads(path.read_text())["results"]
    tokens = [info["token"] for info in safe_load(converted["val"])["infos"]]
    assert list(results) == tokens
    assert (tmp_path / "preds_nvschema.jsonl").read_text().count("\n") == sum(len(b) for b in results.values())
    for token in tokens:
        name = token.replace("/", "_") + ".png"
        bev = cv2.imread(str(tmp_path / "vis" / "bev" / name))
        cams = cv2.imread(str(tmp_path / "vis" / "cameras" / name))
        assert bev is not None and bev.shape == (600, 600, 3) and bev.std() > 5  # boxes and grid drawn
        assert cams is not None and cams.shape[1] == 2 * (128 // 3)  # two cameras side by side, downsampled by 3
    assert read_events(tmp_path / "status.json")[-1]["status"] == "SUCCESS"
