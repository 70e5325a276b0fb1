"""Run an exported Sparse4D `.onnx` frame graph with ONNX Runtime over sequences, carrying the state.

`OnnxFrameRunner` owns the instance-bank state between frames (the graph's `next_*` outputs become the
next frame's `prev_*` inputs) and turns timestamps into the graph's `time_interval` exactly as
`Sparse4D.forward` does: seconds since the slot's previous frame, or the model's default interval on a
first frame or when time does not advance. `run_onnx_inference(spec)` is what `sparse4d inference`
calls for an `.onnx` checkpoint; it writes the same files as the PyTorch inference.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sparse4d.engine.onnx_graph import ONNX_FORMAT, OUTPUT_NAMES, STATE_CARRY, STATE_INPUTS
from sparse4d.errors import DataError, InputFileError, SpecError

LOG = logging.getLogger(__name__)


class OnnxFrameRunner:
    """One ONNX Runtime session of the frame graph plus the temporal state of one sequence (batch 1)."""

    def __init__(self, path: str | Path, *, key: str = "inference.checkpoint", threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"ONNX file {path} does not exist", key=key, hint="write one with `sparse4d export`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise DataError(f"{path} is not a loadable ONNX model ({str(exc)[:300]})", key=key) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT:
            raise DataError(f"{path} is not a Sparse4D frame graph (metadata format {meta.get('format')!r})", key=key,
                            hint="export it with `sparse4d export`")
        self.classes: list[str] = json.loads(meta["classes"])
        self.default_time_interval = float(meta["default_time_interval"])
        self.default_tracking_threshold = float(meta["default_tracking_threshold"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.num_cams, self.height, self.width = (int(v) for v in (self.inputs["img"].shape[1], *self.inputs["img"].shape[3:]))
        self._initial = {name: self._zeros(name) for name in STATE_INPUTS}
        self.reset()

    def _zeros(self, name: str) -> np.ndarray:
        info = self.inputs[name]
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}[info.type]
        value = np.zeros([int(d) for d in info.shape], dtype=dtype)
        return value - 1 if name == "prev_track_id" else value

    def reset(self) -> None:
        """Forget the carried instances: the next frame starts a sequence whatever its flag says."""
        self.state = {name: value.copy() for name, value in self._initial.items()}
        self.prev_timestamp: float | None = None

    def time_interval(self, timestamp: float, first_frame: bool) -> float:
        if first_frame or self.prev_timestamp is None:
            return self.default_time_interval
        dt = float(timestamp) - self.prev_timestamp
        return dt if dt > 0 else self.default_time_interval

    def run_frame(self, img: np.ndarray, projection_mat: np.ndarray, image_wh: np.ndarray, *, timestamp: float,
                  first_frame: bool, tracking_threshold: float | None = None) -> dict[str, np.ndarray]:
        """One frame (arrays with a leading batch of 1); returns the detection outputs and advances the state."""
        if img.shape[1:] != (self.num_cams, 3, self.height, self.width) or img.shape[0] != 1:
            raise DataError(f"images are {tuple(img.shape)} but the ONNX graph takes (1, {self.num_cams}, 3, {self.height}, {self.width})",
                            key="dataset.augmentation.final_dim",
                            hint="use the camera count the model was trained with and final_dim = [export.input_height, export.input_width]")
        first = first_frame or self.prev_timestamp is None
        threshold = self.default_tracking_threshold if tracking_threshold is None else float(tracking_threshold)
        feed = {
            "img": np.ascontiguousarray(img, dtype=np.float32),
            "projection_mat": np.ascontiguousarray(projection_mat, dtype=np.float32),
            "image_wh": np.ascontiguousarray(image_wh, dtype=np.float32),
            "time_interval": np.array([self.time_interval(timestamp, first)], dtype=np.float32),
            "first_frame": np.array([first], dtype=np.bool_),
            "tracking_threshold": np.array([threshold], dtype=np.float32),
            **self.state,
        }
        values = dict(zip(OUTPUT_NAMES, self.session.run(OUTPUT_NAMES, feed)))
        self.state = {STATE_CARRY[name]: values.pop(name) for name in list(STATE_CARRY)}
        self.prev_timestamp = float(timestamp)
        return values


def decoded_as_tensors(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Graph outputs in the shape of `Sparse4D.forward(...)["decoded"]`, for the shared result writer."""
    import torch

    return {name: torch.from_numpy(np.asarray(outputs[name])) for name in ("boxes_3d", "scores_3d", "cls_scores", "labels_3d", "track_ids", "keep")}


def predict_onnx(runner: OnnxFrameRunner, loader: Any, classes: list[str], tracking_threshold: float) -> dict[str, list[dict]]:
    """{sample_token: [result box, ...]} over a batch-1 evaluation loader (frames in time order)."""
    from sparse4d.batch import normalized_images
    from sparse4d.engine.predictions import add_first, results_from_decoded

    runner.reset()
    results: dict[str, list[dict]] = {}
    for batch in loader:
        if batch["img"].shape[0] != 1:
            raise SpecError("ONNX inference runs one sequence at a time", key="inference.batch_size", hint="use -1 or 1")
        out = runner.run_frame(normalized_images(batch).numpy(), batch["projection_mat"].numpy(), batch["image_wh"].numpy(),
                               timestamp=float(batch["timestamp"][0]), first_frame=bool(batch["first_frame"][0]),
                               tracking_threshold=tracking_threshold)
        add_first(results, results_from_decoded(decoded_as_tensors(out), batch, classes))
    runner.reset()
    return results


def run_onnx_inference(spec: Any) -> Path:
    """`sparse4d inference` with `inference.checkpoint` = an exported .onnx; returns the results JSON path."""
    from sparse4d.engine.action_status import action_status
    from sparse4d.jobs.status_file import SUCCESS

    i = spec.inference
    results_dir = Path(i.results_dir or spec.results_dir)
    with action_status(results_dir, "inference (ONNX Runtime) started") as status:
        path, frames = _infer_onnx(spec, results_dir)
    status.write(SUCCESS, f"inference finished: {frames} frames, results in {path.name}", kpi={"frames": frames})
    return path


def _infer_onnx(spec: Any, results_dir: Path) -> tuple[Path, int]:
    from sparse4d.engine.data_module import build_dataset, eval_loader
    from sparse4d.engine.evaluate import results_document
    from sparse4d.engine.inference import write_nvschema, write_pictures
    from sparse4d.engine.io import atomic_write_json

    i = spec.inference
    if i.batch_size > 1:
        raise SpecError(f"batch size {i.batch_size}: an ONNX frame graph runs one sequence at a time", key="inference.batch_size",
                        hint="use -1 or 1")
    runner = OnnxFrameRunner(i.checkpoint)
    classes = [str(c) for c in spec.dataset.classes]
    if classes != runner.classes:
        raise DataError(f"{i.checkpoint} was exported for classes {runner.classes}, the spec lists {classes}", key="dataset.classes",
                        hint="set dataset.classes to the training classes")
    height, width = (int(v) for v in spec.dataset.augmentation.final_dim)
    if (height, width) != (runner.height, runner.width):
        raise SpecError(f"final_dim [{height}, {width}] differs from the ONNX input [{runner.height}, {runner.width}]",
                        key="dataset.augmentation.final_dim", hint=f"set it to [{runner.height}, {runner.width}] (and model.input_shape to [{runner.width}, {runner.height}])")
    model_cfg = spec.model.model_copy(update={"input_shape": [runner.width, runner.height]})
    dataset = build_dataset(spec.dataset, model_cfg, "test")
    threshold = i.tracking.threshold if i.tracking.enabled else 1.01  # above any score: no track is started
    results = predict_onnx(runner, eval_loader(dataset, 1, spec.dataset.num_workers), classes, threshold)
    path = atomic_write_json(results_document(results, source=str(i.checkpoint)), results_dir / f"{i.jsonfile_prefix}.json")
    if i.output_nvschema:
        write_nvschema(results, results_dir / f"{i.jsonfile_prefix}_nvschema.jsonl", spec.visualize.vis_score_threshold)
    write_pictures(dataset, results, spec, results_dir)
    print(f"inference (ONNX Runtime): {len(results)} frames -> {path}", flush=True)
    return path, len(results)
