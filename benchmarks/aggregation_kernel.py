"""Fused Triton deformable aggregation vs the grid_sample reference at the Sparse4D shapes.

Shapes from issue 11: 6 cameras, 13 points, 4 levels (128x352 ... 16x44), 256 channels, 8 groups;
batch 1 with 900 anchors, and batch 2 with 2180 queries (anchors + denoising). Points are uniform in
[0, 1] in every camera (the worst case: every sample reads four pixels). Times are CUDA-event medians.

    PYTHONPATH=. python benchmarks/aggregation_kernel.py [--sweep] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from sparse4d.model import fused_aggregation as fa
from sparse4d.model.aggregation import deformable_aggregation

LEVELS = [(128, 352), (64, 176), (32, 88), (16, 44)]


POINTS = "uniform"  # or "clustered", "visible" (--points)


def sample_points(b: int, q: int, p: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Normalised (u, v). "uniform": anywhere in every camera. "clustered": every query's points
    within ~2% of one of 16 spots per sample, as trained queries gather on the few objects of a
    scene; coarse-level pixels then collect thousands of entries (long runs in the pixel backward).
    "visible": clustered, but as projected points are, inside one camera (a quarter of the queries
    also in the next one) and outside all others, whose levels the kernels then skip."""
    if POINTS == "uniform":
        return torch.rand(b, q, p, n, 2, generator=g, device="cuda")
    spots = torch.rand(b, 16, 1, n, 2, generator=g, device="cuda") * 0.8 + 0.1
    pick = torch.randint(0, 16, (b, q), generator=g, device="cuda")
    centres = torch.gather(spots.expand(b, 16, p, n, 2), 1, pick[:, :, None, None, None].expand(b, q, p, n, 2))
    points = (centres + torch.randn(b, q, p, n, 2, generator=g, device="cuda") * 0.02).clamp(0, 1)
    if POINTS == "clustered":
        return points
    home = torch.randint(0, n, (b, q), generator=g, device="cuda")
    cams = torch.arange(n, device="cuda")
    also_next = torch.rand(b, q, generator=g, device="cuda") < 0.25
    seen = (cams == home[..., None]) | ((cams == (home[..., None] + 1) % n) & also_next[..., None])  # (b, q, n)
    outside = torch.rand(b, q, p, n, 2, generator=g, device="cuda") * 2 + 1.2
    return torch.where(seen[:, :, None, :, None], points, outside)


def make_inputs(b: int, q: int, dtype: torch.dtype, channels_last: bool, n: int = 6, c: int = 256, groups: int = 8, p: int = 13, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    feats = []
    for h, w in LEVELS:
        f = torch.randn(b * n, c, h, w, generator=g, device="cuda", dtype=dtype)
        if channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        feats.append(f.reshape(b, n, c, h, w).requires_grad_())
    points = sample_points(b, q, p, n, g).requires_grad_()
    weights = torch.randn(b, q, n * len(LEVELS) * p, groups, generator=g, device="cuda").softmax(dim=2)
    weights = weights.reshape(b, q, n, len(LEVELS), p, groups).requires_grad_()
    return feats, points, weights


def cuda_time_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(fn, feats, points, weights) -> tuple[float, float]:
    grad = torch.randn(points.shape[0], points.shape[1], feats[0].shape[2], device="cuda", dtype=feats[0].dtype)

    def forward():
        with torch.no_grad():
            fn(feats, points, weights)

    def forward_backward():
        for t in (*feats, points, weights):
            t.grad = None
        fn(feats, points, weights).backward(grad)

    return cuda_time_ms(forward), cuda_time_ms(forward_backward)


def accuracy(feats, points, weights) -> dict[str, float]:
    """Relative L2 error of the fused output and gradients vs the reference in float64 (smaller batch slice)."""
    sl = slice(0, 200)
    f32 = [f.detach()[:, :, :, :, :] for f in feats]
    pts, wts = points.detach()[:, sl], weights.detach()[:, sl]
    res = []
    for fn, dt in ((fa.fused_deformable_aggregation, None), (deformable_aggregation, torch.float64)):
        fs = [(x.to(dt) if dt else x).clone().requires_grad_() for x in f32]
        pt = (pts.to(dt) if dt else pts).clone().requires_grad_()
        wt = (wts.to(dt) if dt else wts).clone().requires_grad_()
        out = fn(fs, pt, wt)
        gen = torch.Generator(device="cuda").manual_seed(1)
        out = out if dt else out.float()
        out.backward(torch.randn(out.shape, generator=gen, device="cuda").to(out.dtype))
        res.append([out.detach().double(), pt.grad.double(), wt.grad.double(), *[x.grad.double() for x in fs]])
    names = ["out", "grad_points", "grad_weights", *[f"grad_level{i}" for i in range(len(feats))]]
    return {k: float((a - r).norm() / r.norm()) for k, a, r in zip(names, *res)}


def backward_breakdown(feats, points, weights) -> dict[str, float]:
    """CUDA time per kernel family of one fused forward+backward (torch.profiler)."""
    grad = torch.randn(points.shape[0], points.shape[1], feats[0].shape[2], device="cuda", dtype=feats[0].dtype)
    fa.fused_deformable_aggregation(feats, points, weights).backward(grad)
    torch.cuda.synchronize()
    for t in (*feats, points, weights):
        t.grad = None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fa.fused_deformable_aggregation(feats, points, weights).backward(grad)
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.device_type == torch.autograd.DeviceType.CUDA or getattr(ev, "device_time_total", 0) > 0:
            t = getattr(ev, "device_time_total", 0.0) / 1000.0
            if t > 0.005:
                out[ev.key[:60]] = round(t, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def sweep(feats, points, weights) -> list[dict]:
    rows = []
    base = (fa.FORWARD_WARPS, fa.FORWARD_GROUPS_PER_PROGRAM, fa.BACKWARD_WARPS, fa.PIXEL_WARPS, fa.PIXEL_BLOCK_ENTRIES)
    for fw, fg, bw, pw, pe in [(8, 0, 8, 4, 8), (4, 0, 8, 4, 8), (8, 4, 8, 4, 8), (8, 0, 8, 2, 8), (8, 0, 8, 4, 4),
                               (8, 0, 8, 2, 4), (8, 0, 8, 1, 4), (8, 0, 8, 2, 2), (8, 0, 8, 1, 2)]:
        fa.FORWARD_WARPS, fa.FORWARD_GROUPS_PER_PROGRAM, fa.BACKWARD_WARPS, fa.PIXEL_WARPS, fa.PIXEL_BLOCK_ENTRIES = fw, fg, bw, pw, pe
        fwd, fb = measure(fa.fused_deformable_aggregation, feats, points, weights)
        rows.append({"fwd_warps": fw, "fwd_groups": fg, "bwd_warps": bw, "pix_warps": pw, "pix_block": pe, "fwd_ms": round(fwd, 3), "fwd_bwd_ms": round(fb, 3)})
        print(rows[-1], flush=True)
    fa.FORWARD_WARPS, fa.FORWARD_GROUPS_PER_PROGRAM, fa.BACKWARD_WARPS, fa.PIXEL_WARPS, fa.PIXEL_BLOCK_ENTRIES = base
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also try launch shapes (batch 1, bf16)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--points", choices=("uniform", "clustered", "visible"), default="uniform", help="where the sampling points fall (see sample_points)")
    parser.add_argument("--pixel-backward", choices=("segments", "chunks"), default=fa.PIXEL_BACKWARD,
                        help="how the feature gradient is summed per pixel (fused_aggregation.PIXEL_BACKWARD)")
    args = parser.parse_args()
    global POINTS
    POINTS = args.points
    fa.PIXEL_BACKWARD = args.pixel_backward
    if not fa.fused_aggregation_available():
        print("needs a CUDA GPU and Triton", file=sys.stderr)
        return 2
    record: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": fa.triton.__version__,
                    "points": args.points, "pixel_backward": args.pixel_backward, "cases": []}
    print(f"# {record['gpu']}  torch {record['torch']}  triton {record['triton']}", flush=True)
    feats, points, weights = make_inputs(1, 900, torch.float32, True)
    record["accuracy_fp32_vs_float64"] = accuracy(feats, points, weights)
    print("accuracy (rel L2 vs float64):", record["accuracy_fp32_vs_float64"], flush=True)
    del feats, points, weights
    for b, q in ((1, 900), (2, 2180)):
        for dtype in (torch.float32, torch.bfloat16):
            for cl in (True, False):
                feats, points, weights = make_inputs(b, q, dtype, cl)
                fwd, fb = measure(fa.fused_deformable_aggregation, feats, points, weights)
                case = {"batch": b, "queries": q, "dtype": str(dtype).split(".")[-1], "features": "channels_last" if cl else "NCHW",
                        "fused_fwd_ms": round(fwd, 3), "fused_fwd_bwd_ms": round(fb, 3)}
                if not args.skip_reference and cl:
                    rf, rfb = measure(deformable_aggregation, feats, points, weights)
                    case.update(grid_sample_fwd_ms=round(rf, 3), grid_sample_fwd_bwd_ms=round(rfb, 3))
                if cl and dtype == torch.bfloat16:
                    case["breakdown_ms"] = backward_breakdown(feats, points, weights)
                record["cases"].append(case)
                print(case, flush=True)
                del feats, points, weights
                torch.cuda.empty_cache()
    if args.sweep:
        for b, q in ((1, 900), (2, 2180)):
            feats, points, weights = make_inputs(b, q, torch.bfloat16, True)
            record[f"sweep_b{b}_q{q}_bf16"] = sweep(feats, points, weights)
            del feats, points, weights
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    print("\nbatch queries dtype    features       fused fwd  fused f+b  grid_sample fwd  grid_sample f+b")
    for c in record["cases"]:
        print(f"{c['batch']:5d} {c['queries']:7d} {c['dtype']:8s} {c['features']:13s} {c['fused_fwd_ms']:9.3f} {c['fused_fwd_bwd_ms']:10.3f} "
              f"{c.get('grid_sample_fwd_ms', float('nan')):16.3f} {c.get('grid_sample_fwd_bwd_ms', float('nan')):16.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
