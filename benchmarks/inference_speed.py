"""Inference speed of the default Sparse4D config: frames/s of streamed 6-camera frames, bf16, batch 1.

One frame = 6 images of 1408x512 through ResNet-101 + FPN + the 6-layer temporal head + top-k decode,
with the instance bank carried between frames (as in tracking). Timed over the whole frame (host
to host, synchronised), not per kernel. Compared with the grid_sample aggregation in the same run.

    PYTHONPATH=. python benchmarks/inference_speed.py [--frames 50] [--fp32] [--compile] [--cuda-graphs] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from sparse4d.batch import normalized_images
from sparse4d.config.model import ModelConfig
from sparse4d.model.decoder import to_detections
from sparse4d.model.fused_aggregation import enable_fused_aggregation
from sparse4d.model.graphed_stream import GraphedStream
from sparse4d.model.sparse4d import Sparse4D

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_throughput import CAMERAS, HEIGHT, NUM_CLASSES, WIDTH, scene_anchors, synthetic_batch, to_device  # noqa: E402


def timed_frames(run_frame, frames: int, warmup: int, autocast) -> float:
    """frames/s of run_frame(i) over `frames` calls after `warmup` untimed ones (synchronised wall clock)."""
    with torch.inference_mode(), autocast():
        for i in range(warmup + frames):
            if i == warmup:
                torch.cuda.synchronize()
                start = time.perf_counter()
            run_frame(i)
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def frames_per_second(model: Sparse4D, batches: list[dict], frames: int, warmup: int, autocast) -> float:
    """frames/s through `predict` (returns host-side detections: includes the per-frame sync)."""
    model.reset_temporal_state()
    return timed_frames(lambda i: model.predict(batches[i % len(batches)]), frames, warmup, autocast)


def frame_fps(model: Sparse4D, batches: list[dict], frames: int, warmup: int, autocast, step) -> float:
    """frames/s through `forward_frame` (the traceable export path), optionally compiled."""
    state = model.initial_state(1, batches[0]["img"].device)
    dt = torch.full((1,), model.default_time_interval, device=state.valid.device)

    def run_frame(i: int) -> None:
        nonlocal state
        b = batches[i % len(batches)]
        out, state = step(b["img"], b["projection_mat"], b["image_wh"], dt, b["first_frame"] & (i == 0), state)
        out["boxes_3d"].cpu()  # the detections reach the host every frame

    return timed_frames(run_frame, frames, warmup, autocast)


def stream_fps(model: Sparse4D, batches: list[dict], frames: int, warmup: int, autocast) -> tuple[float, int]:
    """frames/s replaying each frame from a CUDA graph (GraphedStream), detections to the host as `predict`."""
    stream = GraphedStream(model)
    fps = timed_frames(lambda i: to_detections(stream(batches[i % len(batches)])), frames, warmup, autocast)
    return fps, stream.num_graphs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model.forward_frame)")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time whole frames replayed from CUDA graphs (GraphedStream)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cfg = ModelConfig()
    model = Sparse4D.from_config(cfg, NUM_CLASSES, anchors=scene_anchors(cfg.head.instance_bank.num_anchor)).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    batches = []
    for step in range(8):
        b = to_device(synthetic_batch(1, 32, step), device)
        b["img"] = normalized_images(b)  # forward_frame/predict_frame take normalised float images
        b["first_frame"] = torch.tensor([step == 0], device=device)
        batches.append(b)
    autocast = contextlib.nullcontext if args.fp32 else (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cameras": CAMERAS, "input": f"{WIDTH}x{HEIGHT}",
              "precision": "fp32" if args.fp32 else "bf16-autocast", "compile": args.compile, "batch": 1}
    record["fps_grid_sample"] = round(frames_per_second(model, batches, args.frames, args.warmup, autocast), 2)
    if enable_fused_aggregation():
        record["fps_fused"] = round(frames_per_second(model, batches, args.frames, args.warmup, autocast), 2)
        record["fps_fused_forward_frame"] = round(frame_fps(model, batches, args.frames, args.warmup, autocast, model.forward_frame), 2)
        if args.cuda_graphs:
            fps, graphs = stream_fps(model, batches, args.frames, args.warmup, autocast)
            record["fps_fused_cuda_graph"], record["cuda_graphs_captured"] = round(fps, 2), graphs
        if args.compile:
            compiled = torch.compile(model.forward_frame, dynamic=False)
            started = time.perf_counter()
            try:
                record["fps_fused_forward_frame_compiled"] = round(frame_fps(model, batches, args.frames, args.warmup, autocast, compiled), 2)
            except Exception as exc:  # report, do not hide: compile support is optional
                record["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            record["compile_and_run_s"] = round(time.perf_counter() - started, 1)
    record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
