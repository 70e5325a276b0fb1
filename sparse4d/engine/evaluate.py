"""`sparse4d evaluate`: predict the val split in sequence order, write results and score them.

`evaluate.checkpoint` is a model checkpoint (.pth, including quantized_model_torchao.pth), or a
results file (.json in the nuScenes result format, e.g. one written by inference): then nothing is
predicted and that file is scored against `dataset.val_dataset.ann_file`.

Writes under results_dir: `results_nusc.json` (the predictions, when a model ran), `metrics.json`
(per-class detection and tracking metrics), status.json events whose kpi carries `val_mAP`, `mAP`,
`img_bbox_NuScenes/mAP`, `NDS` and, with tracking, `AMOTA`, `AMOTP`, `MOTA`, `IDF1`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sparse4d.engine.data_module import build_dataset, eval_loader
from sparse4d.engine.action_status import action_status
from sparse4d.engine.io import atomic_write_json
from sparse4d.engine.model_loading import load_model_for_eval
from sparse4d.engine.predictions import Annotations
from sparse4d.engine.runloop import predict_loader
from sparse4d.engine.scoring import kpis, read_results_file, score_results, tables, write_metrics
from sparse4d.errors import DataError
from sparse4d.jobs.status_file import SUCCESS

LOG = logging.getLogger(__name__)
RESULTS_NAME = "results_nusc.json"
METRICS_NAME = "metrics.json"


def results_document(results: dict[str, list[dict]], *, source: str) -> dict[str, Any]:
    return {"meta": {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False,
                     "source": source}, "results": results}


def eval_device(num_gpus: int, gpu_ids: list[int]) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_ids[0] if gpu_ids else 0)
    return torch.device("cpu")


def run_evaluate(spec: Any) -> dict[str, float]:
    e = spec.evaluate
    results_dir = Path(e.results_dir or spec.results_dir)
    with action_status(results_dir, "evaluate started", oom_action="evaluate") as status:
        values = _evaluate(spec, results_dir)
    status.write(SUCCESS, "evaluate finished", kpi=values)
    return values


def _evaluate(spec: Any, results_dir: Path) -> dict[str, float]:
    e = spec.evaluate
    dataset = build_dataset(spec.dataset, spec.model, "val")
    annotations = Annotations.from_dataset(dataset, use_valid_flag=spec.dataset.val_dataset.use_valid_flag)
    if not annotations.has_gt:
        raise DataError(f"{spec.dataset.val_dataset.ann_file} has no ground truth to evaluate against", key="dataset.val_dataset.ann_file",
                        hint="evaluate needs an annotated split; use inference for a test split")
    checkpoint = str(e.checkpoint)
    if checkpoint.lower().endswith(".json"):
        results = read_results_file(Path(checkpoint))
        LOG.info("scoring the saved results %s", checkpoint)
    else:
        device = eval_device(e.num_gpus, list(e.gpu_ids))
        model = load_model_for_eval(checkpoint, spec).to(device)
        batch_size = e.batch_size if e.batch_size > 0 else spec.dataset.batch_size
        loader = eval_loader(dataset, batch_size, spec.dataset.num_workers)
        results = predict_loader(model, loader, dataset.classes, device=device, tracking_threshold=e.tracking.threshold,
                                 cuda_graphs=True)
        atomic_write_json(results_document(results, source=checkpoint), results_dir / RESULTS_NAME)
    unknown = [t for t in results if t not in annotations.gt]
    if unknown:
        LOG.warning("%d result samples are not in the annotations (e.g. %s); they are ignored", len(unknown), unknown[0])
    metrics = tuple(m for m in e.metrics if m != "tracking" or e.tracking.enabled)
    scored = score_results(results, annotations, metrics)
    print(tables(scored), flush=True)
    write_metrics(scored, results_dir / METRICS_NAME)
    values = kpis(scored)
    if spec.visualize.show and not checkpoint.lower().endswith(".json"):
        from sparse4d.engine.inference import write_pictures

        write_pictures(dataset, results, spec, results_dir, gt=annotations.gt)
    return values
