"""Score a results dict against annotations: detection (mAP, NDS) and tracking (AMOTA ...), as KPIs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparse4d.engine.io import atomic_write_json
from sparse4d.engine.predictions import Annotations
from sparse4d.metrics import evaluate_detection, evaluate_tracking

MAP_ALIASES = ("val_mAP", "mAP", "img_bbox_NuScenes/mAP")


def score_results(results: dict[str, list[dict]], annotations: Annotations, metrics: tuple[str, ...] = ("detection",),
                  tracking_threshold: float | None = None) -> dict[str, Any]:
    """{"detection": DetectionMetrics, "tracking": TrackingMetrics} for the metrics asked for."""
    scored: dict[str, Any] = {}
    known = {t: results.get(t, []) for t in annotations.gt}
    if "detection" in metrics:
        scored["detection"] = evaluate_detection(annotations.gt, known, annotations.classes, annotations.class_range)
    if "tracking" in metrics:
        scored["tracking"] = evaluate_tracking(annotations.gt, known, annotations.tracking_frames(), annotations.classes,
                                               annotations.class_range)
    return scored


def kpis(scored: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flat scalar KPIs: mAP under its three aliases, NDS, TP errors, AMOTA/AMOTP/MOTA/IDF1."""
    out: dict[str, float] = {}
    det = scored.get("detection")
    if det is not None:
        for alias in MAP_ALIASES:
            out[alias] = det.mAP
        out[f"{prefix}NDS"] = det.NDS
        out["img_bbox_NuScenes/NDS"] = det.NDS
        for name, value in det.to_dict().items():
            if name.startswith("m") and name[1:] in ("ATE", "ASE", "AOE", "AVE") and value is not None:
                out[f"{prefix}{name}"] = float(value)
    trk = scored.get("tracking")
    if trk is not None:
        out.update({f"{prefix}AMOTA": trk.amota, f"{prefix}AMOTP": trk.amotp, f"{prefix}MOTA": trk.mota, f"{prefix}IDF1": trk.idf1})
    return {k: float("nan") if v is None else float(v) for k, v in out.items()}


def tables(scored: dict[str, Any]) -> str:
    parts = []
    if "detection" in scored:
        parts.append("Detection\n" + scored["detection"].format_table())
    if "tracking" in scored:
        parts.append("Tracking\n" + scored["tracking"].format_table())
    return "\n\n".join(parts)


def write_metrics(scored: dict[str, Any], path: Path) -> None:
    atomic_write_json({name: value.to_dict() for name, value in scored.items()}, path)


def read_results_file(path: Path) -> dict[str, list[dict]]:
    from sparse4d.errors import DataError, InputFileError

    if not path.is_file():
        raise InputFileError(f"results file {path} does not exist", key="evaluate.checkpoint")
    try:
        payload = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})", key="evaluate.checkpoint") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), dict):
        raise DataError(f"{path} is not a nuScenes results file (needs a 'results' object keyed by sample token)",
                        key="evaluate.checkpoint")
    return payload["results"]
