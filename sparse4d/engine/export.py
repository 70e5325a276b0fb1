"""`sparse4d export`: a trained checkpoint -> one ONNX frame graph (see sparse4d/engine/onnx_graph.py).

The network is rebuilt from the checkpoint's stored config, so the camera count, temporal-instance
count and embed sizes of the graph are the checkpoint's; only the image size comes from
`export.input_width` / `export.input_height`. The file is traced on CPU (or `cuda:gpu_id` when a GPU
is present and `export.on_cpu` is false), checked with `onnx.checker` and run once in ONNX Runtime
before the action reports success.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any


LOG = logging.getLogger(__name__)


def export_device(on_cpu: bool, gpu_id: int) -> str:
    import torch

    if on_cpu or not torch.cuda.is_available():
        return "cpu"
    if gpu_id >= torch.cuda.device_count():
        from sparse4d.errors import SpecError

        raise SpecError(f"GPU {gpu_id} does not exist ({torch.cuda.device_count()} visible)", key="export.gpu_id",
                        hint="pick a visible GPU or set export.on_cpu=true")
    return f"cuda:{gpu_id}"


def onnx_target(spec: Any) -> Path:
    e = spec.export
    results_dir = Path(e.results_dir or spec.results_dir)
    target = Path(e.onnx_file)
    return target if target.is_absolute() else results_dir / target


def smoke_run(path: Path) -> None:
    """One first frame through ONNX Runtime on CPU: the export is only done when the runtime accepts it."""
    import numpy as np

    from sparse4d.engine.onnx_runner import OnnxFrameRunner

    runner = OnnxFrameRunner(path, key="export.onnx_file")
    n, h, w = runner.num_cams, runner.height, runner.width
    wh = np.tile(np.array([[[w, h]]], dtype=np.float32), (1, n, 1))
    runner.run_frame(np.zeros((1, n, 3, h, w), np.float32), np.tile(np.eye(4, dtype=np.float32), (1, n, 1, 1)), wh,
                     timestamp=0.0, first_frame=True)


def run_export(spec: Any) -> Path:
    """Export per a validated ExportSpec; returns the written .onnx path."""
    from sparse4d.engine.deploy_model import load_sparse4d_checkpoint
    from sparse4d.engine.onnx_graph import check_export_fits, export_frame_graph
    from sparse4d.engine.action_status import action_status
    from sparse4d.jobs.status_file import SUCCESS

    e = spec.export
    target = onnx_target(spec)
    results_dir = Path(e.results_dir or spec.results_dir)
    with action_status(results_dir, "export started") as status:
        started = time.monotonic()
        loaded = load_sparse4d_checkpoint(e.checkpoint, key="export.checkpoint", fallback_model_cfg=spec.model,
                                          fallback_classes=list(spec.dataset.classes))
        shape = check_export_fits(loaded.model, loaded.model_cfg, width=int(e.input_width), height=int(e.input_height),
                                  batch=int(e.batch_size))
        device = export_device(bool(e.on_cpu), int(e.gpu_id))
        export_frame_graph(loaded.model, shape, loaded.classes, target, opset=int(e.opset_version), device=device, verbose=bool(e.verbose))
        smoke_run(target)
    message = (f"exported {target} ({shape.num_cams} cameras, {shape.num_temp} temporal instances, {shape.width}x{shape.height}, "
               f"opset {e.opset_version}) in {time.monotonic() - started:.1f} s")
    print(message, flush=True)
    status.write(SUCCESS, message, kpi={"num_cams": shape.num_cams, "num_temp_instances": shape.num_temp})
    return target
