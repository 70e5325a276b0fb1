"""Per-frame CPU latency of the exported ONNX frame graph (ONNX Runtime) vs the PyTorch model.

    python benchmarks/export_latency.py --frames 20 --warmup 3
    python benchmarks/export_latency.py --threads 1 --quantized

Small config (the one model_forward_backward.py calls `small`): ResNet-18, 256x128, 2 cameras,
64 anchors, 32 temporal instances, 64-dim embeddings, 2 decoders; untrained weights. Both paths run
the same frames of one sequence with the temporal state carried; the first frame is timed too (the
graph has no separate first-frame path). `--quantized` also times the int8 weight-only model of
`sparse4d quantize` in PyTorch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from model_forward_backward import anchors, build, projection  # noqa: E402

from sparse4d.batch import normalized_images  # noqa: E402
from sparse4d.engine.onnx_graph import check_export_fits, export_frame_graph  # noqa: E402
from sparse4d.engine.onnx_runner import OnnxFrameRunner  # noqa: E402
from sparse4d.model.sparse4d import Sparse4D  # noqa: E402


def sequence(frames: int, cams: int, w: int, h: int) -> list[dict]:
    proj = torch.stack([projection((-20.0, -20.0 + 40 * c / max(cams - 1, 1), 3.0), np.pi / 4, w, h) for c in range(cams)])[None]
    wh = torch.tensor([float(w), float(h)]).expand(1, cams, 2).clone()
    g = torch.Generator().manual_seed(0)
    return [{"img": torch.randn(1, cams, 3, h, w, generator=g), "projection_mat": proj, "image_wh": wh,
             "timestamp": torch.tensor([0.1 * f], dtype=torch.float64), "first_frame": torch.tensor([f == 0])} for f in range(frames)]


def time_torch(model: torch.nn.Module, frames: list[dict], warmup: int) -> list[float]:
    model.reset_temporal_state()
    times = []
    with torch.no_grad():
        for i, batch in enumerate(frames[:warmup] + frames):
            if i == warmup:
                model.reset_temporal_state()
            start = time.perf_counter()
            model(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def time_onnx(runner: OnnxFrameRunner, frames: list[dict], warmup: int) -> list[float]:
    times = []
    for i, batch in enumerate(frames[:warmup] + frames):
        if i == warmup:
            runner.reset()
        args = (normalized_images(batch).numpy(), batch["projection_mat"].numpy(), batch["image_wh"].numpy())
        start = time.perf_counter()
        runner.run_frame(*args, timestamp=float(batch["timestamp"][0]), first_frame=bool(batch["first_frame"][0]))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def summary(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return f"{name:<28} median {statistics.median(ms):8.1f} ms   mean {statistics.mean(ms):8.1f} ms   min {min(ms):8.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cams", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for both runtimes (0: their defaults)")
    ap.add_argument("--quantized", action="store_true", help="also time the int8 weight-only PyTorch model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build("small", args.cams)
    model = Sparse4D.from_config(cfg, 4, anchors=anchors(cfg.head.instance_bank.num_anchor)).eval()
    w, h = cfg.input_shape
    shape = check_export_fits(model, cfg, width=w, height=h, batch=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.onnx"
        start = time.perf_counter()
        export_frame_graph(model, shape, ["a", "b", "c", "d"], path, opset=17)
        export_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        runner = OnnxFrameRunner(path, threads=args.threads or None)
        frames = sequence(args.frames, args.cams, w, h)
        onnx_times = time_onnx(runner, frames, args.warmup)
        del runner  # its thread pool must not compete with PyTorch's
    torch_times = time_torch(model, frames, args.warmup)
    print(f"small config: resnet_18 {w}x{h}, {args.cams} cameras, {cfg.head.instance_bank.num_anchor} anchors, "
          f"{cfg.head.instance_bank.num_temp_instances} temporal; torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"export {export_s:.1f} s, {size_mb:.1f} MB")
    print(summary("PyTorch CPU (fp32)", torch_times))
    print(summary("ONNX Runtime CPU (fp32)", onnx_times))
    if args.quantized:
        from sparse4d.engine.quantize import apply_int8_weight_only, select_layers

        apply_int8_weight_only(model, select_layers(model, [], []))
        print(summary("PyTorch CPU (int8 weights)", time_torch(model, frames, args.warmup)))


if __name__ == "__main__":
    main()
