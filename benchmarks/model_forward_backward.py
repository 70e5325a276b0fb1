"""Forward/backward time of Sparse4D on synthetic data (CPU or GPU).

    python benchmarks/model_forward_backward.py --config small --batch 1 --iters 3
    python benchmarks/model_forward_backward.py --config default --cams 6 --iters 1

`small`: ResNet-18, 256x128, 2 cameras, 64 anchors (the test config). `default`: the TAO template
defaults (ResNet-101, 1408x512, 900 anchors, 6 decoders) with random anchors.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse4d.config.model import ModelConfig  # noqa: E402
from sparse4d.model.sparse4d import Sparse4D  # noqa: E402


def anchors(num: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = np.zeros((num, 11), dtype=np.float32)
    a[:, :2] = rng.uniform(-15, 15, (num, 2))
    a[:, 2] = 0.9
    a[:, 3:6] = np.log([0.6, 0.6, 1.7])
    a[:, 7] = 1.0
    return a


def projection(position: tuple[float, float, float], yaw: float, w: int, h: int) -> torch.Tensor:
    fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    down = torch.tensor([0.0, 0.0, -1.0])
    rot = torch.stack([torch.linalg.cross(down, fwd), down, fwd])
    w2c = torch.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ torch.tensor(position)
    k = torch.eye(4)
    k[0, 0] = k[1, 1] = 0.8 * w
    k[0, 2], k[1, 2] = w / 2, h / 2
    return k @ w2c


def make_batch(b: int, n: int, w: int, h: int, num_gt: int, frame: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(frame)
    proj = torch.stack([projection((-20.0, -20.0 + 40 * c / max(n - 1, 1), 3.0), math.pi / 4, w, h) for c in range(n)])
    boxes = []
    for _ in range(b):
        box = torch.zeros(num_gt, 10)
        box[:, :2] = torch.rand(num_gt, 2, generator=g) * 20 - 10
        box[:, 2] = 0.9
        box[:, 3:6] = torch.tensor([0.6, 0.6, 1.7])
        box[:, 6] = torch.rand(num_gt, generator=g) * 6 - 3
        boxes.append(box.to(device))
    return {
        "img": torch.randn(b, n, 3, h, w, generator=g).to(device),
        "projection_mat": proj[None].expand(b, -1, -1, -1).contiguous().to(device),
        "image_wh": torch.tensor([float(w), float(h)]).expand(b, n, 2).contiguous().to(device),
        "timestamp": torch.full((b,), frame / 30.0, dtype=torch.float64),
        "first_frame": torch.full((b,), frame == 0),
        "gt_bboxes_3d": boxes,
        "gt_labels_3d": [torch.zeros(num_gt, dtype=torch.int64, device=device) for _ in range(b)],
        "instance_ids": [torch.arange(num_gt, device=device) for _ in range(b)],
        "gt_depth": (torch.rand(b, n, h, w, generator=g) * 30).to(device),
    }


def build(config: str, cams: int) -> ModelConfig:
    if config == "default":
        cfg = ModelConfig()
        cfg.head.deformable_model.num_cams = cams
        return cfg
    e = 64
    order = ["deformable", "ffn", "norm", "refine", "temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"]
    return ModelConfig.model_validate({
        "embed_dims": e, "input_shape": [256, 128], "backbone": {"type": "resnet_18"},
        "neck": {"out_channels": e, "in_channels": [64, 128, 256, 512]},
        "depth_branch": {"embed_dims": e, "num_depth_layers": 2},
        "head": {
            "embed_dims": e, "num_output": 30, "num_decoder": 2, "num_groups": 4, "operation_order": order,
            "instance_bank": {"num_anchor": 64, "num_temp_instances": 32, "embed_dims": e},
            "anchor_encoder": {"embed_dims": [32, 8, 8, 16], "out_loops": 2},
            "sampler": {"num_dn_groups": 2, "num_temp_dn_groups": 1, "max_dn_gt": 16},
            "deformable_model": {"embed_dims": e, "num_groups": 4, "num_cams": cams, "max_num_cams": max(4, cams), "kps_generator": {"embed_dims": e, "num_learnable_pts": 2}},
            "refine_layer": {"embed_dims": e}, "graph_model": {"embed_dims": 2 * e, "num_heads": 4}, "temp_graph_model": {"embed_dims": 2 * e, "num_heads": 4},
            "norm_layer": {"normalized_shape": e}, "ffn": {"in_channels": 2 * e, "pre_norm": {"normalized_shape": e}, "embed_dims": e, "feedforward_channels": 2 * e},
        },
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["small", "default"], default="small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cams", type=int, default=None, help="cameras per sample (small: 2, default: 6)")
    ap.add_argument("--num-gt", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cams = args.cams or (2 if args.config == "small" else 6)
    cfg = build(args.config, cams)
    torch.manual_seed(0)
    model = Sparse4D.from_config(cfg, num_classes=3, anchors=anchors(cfg.head.instance_bank.num_anchor)).to(device).train()
    w, h = cfg.input_shape
    params = sum(p.numel() for p in model.parameters())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fwd, bwd, inf = [], [], []
    for it in range(args.iters + 1):
        batch = make_batch(args.batch, cams, w, h, args.num_gt, it, device)
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        out = model(batch)
        losses = model.loss(out, batch)
        sync()
        t1 = time.perf_counter()
        losses["loss"].backward()
        sync()
        t2 = time.perf_counter()
        if it > 0:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    model.eval()
    model.reset_temporal_state()
    with torch.no_grad():
        for it in range(args.iters + 1):
            batch = make_batch(args.batch, cams, w, h, args.num_gt, it, device)
            sync()
            t0 = time.perf_counter()
            model.predict(batch)
            sync()
            if it > 0:
                inf.append(time.perf_counter() - t0)
    print(f"config={args.config} device={device} threads={torch.get_num_threads()} batch={args.batch} cams={cams} input={w}x{h} "
          f"anchors={cfg.head.instance_bank.num_anchor} decoders={cfg.head.num_decoder} backbone={cfg.backbone.type} params={params / 1e6:.1f}M")
    print(f"train forward+loss: {statistics.median(fwd) * 1000:.1f} ms  backward: {statistics.median(bwd) * 1000:.1f} ms  "
          f"eval predict: {statistics.median(inf) * 1000:.1f} ms  (median of {args.iters})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
