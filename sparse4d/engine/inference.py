"""`sparse4d inference`: run a checkpoint over the test split, write results and pictures.

Writes under results_dir: `<inference.jsonfile_prefix>.json` (nuScenes result format with tracking
ids), `<prefix>_nvschema.jsonl` when `inference.output_nvschema` (one JSON object per detected object
and frame), and pictures under `visualize.vis_dir` (relative to results_dir): `bev/<token>.png`
(bird's-eye view, boxes coloured by track id) and `cameras/<token>.png` (camera images with the
projected boxes), for boxes scoring at least `visualize.vis_score_threshold`.

An `.onnx` checkpoint is run by ONNX Runtime (`sparse4d.engine.onnx_runner.run_onnx_inference`).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sparse4d.engine.data_module import build_dataset, eval_loader
from sparse4d.engine.action_status import action_status
from sparse4d.engine.evaluate import eval_device, results_document
from sparse4d.engine.io import atomic_write_json
from sparse4d.engine.model_loading import load_model_for_eval
from sparse4d.engine.runloop import predict_loader
from sparse4d.engine.visualize import write_frame_pictures
from sparse4d.jobs.status_file import SUCCESS

LOG = logging.getLogger(__name__)


def vis_folder(spec: Any, results_dir: Path) -> Path:
    folder = Path(spec.visualize.vis_dir)
    return folder if folder.is_absolute() else results_dir / folder


def write_pictures(dataset: Any, results: dict[str, list[dict]], spec: Any, results_dir: Path,
                   gt: dict[str, list[dict]] | None = None) -> int:
    """One BEV and one camera-grid PNG per frame; returns the number of files written."""
    v = spec.visualize
    folder = vis_folder(spec, results_dir)
    count = 0
    for info in dataset.infos:
        token = str(info["token"])
        boxes = results.get(token, [])
        count += len(write_frame_pictures(info, boxes, folder, threshold=v.vis_score_threshold, columns=v.n_images_col,
                                          down_sample=v.viz_down_sample, gt=(gt or {}).get(token, ())))
    LOG.info("wrote %d pictures under %s", count, folder)
    return count


def write_nvschema(results: dict[str, list[dict]], path: Path, threshold: float) -> None:
    """Flat per-object lines {sample_token, frame, class, score, track id, box} (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for token, boxes in results.items():
                for box in boxes:
                    if box["detection_score"] < threshold:
                        continue
                    handle.write(json.dumps({"sample_token": token, "object_type": box["detection_name"],
                                             "confidence": box["detection_score"], "track_id": box["tracking_id"],
                                             "translation": box["translation"], "size": box["size"],
                                             "rotation": box["rotation"], "velocity": box["velocity"]}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_inference(spec: Any) -> Path:
    """Returns the results JSON path."""
    i = spec.inference
    if str(i.checkpoint).lower().endswith(".onnx"):
        from sparse4d.engine.onnx_runner import run_onnx_inference

        return run_onnx_inference(spec)
    results_dir = Path(i.results_dir or spec.results_dir)
    with action_status(results_dir, "inference started", oom_action="inference") as status:
        path, frames = _infer(spec, results_dir)
    status.write(SUCCESS, f"inference finished: {frames} frames, results in {path.name}", kpi={"frames": frames})
    return path


def _infer(spec: Any, results_dir: Path) -> tuple[Path, int]:
    i = spec.inference
    dataset = build_dataset(spec.dataset, spec.model, "test")
    device = eval_device(i.num_gpus, list(i.gpu_ids))
    model = load_model_for_eval(i.checkpoint, spec, key="inference.checkpoint").to(device)
    batch_size = i.batch_size if i.batch_size > 0 else spec.dataset.batch_size
    threshold = i.tracking.threshold if i.tracking.enabled else 1.01  # above any score: no track is started
    results = predict_loader(model, eval_loader(dataset, batch_size, spec.dataset.num_workers), dataset.classes,
                             device=device, tracking_threshold=threshold, cuda_graphs=True)
    path = atomic_write_json(results_document(results, source=str(i.checkpoint)), results_dir / f"{i.jsonfile_prefix}.json")
    if i.output_nvschema:
        write_nvschema(results, results_dir / f"{i.jsonfile_prefix}_nvschema.jsonl", spec.visualize.vis_score_threshold)
    write_pictures(dataset, results, spec, results_dir)
    print(f"inference: {len(results)} frames -> {path}", flush=True)
    return path, len(results)
