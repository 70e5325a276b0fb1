"""Data-layer throughput on this machine: dataset_convert frames/s and DataLoader samples/s.

Usage: PYTHONPATH=. python benchmarks/data_throughput.py [--cameras 4 --frames 60 --size 640x360 --workers 2]
    [--depth-stride 4 [--depth-stride 1 ...]]   # one loader pass per stride (the trainer pools to 4 by default)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sparse4d.config.convert import AICityConfig
from sparse4d.config.dataset import AugmentationConfig, NormalizeConfig
from sparse4d.data.collate import collate_sparse4d
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.dataset import OVPKLDataset
from sparse4d.data.sampler import StreamingBatchSampler
from sparse4d.data.synth import make_synthetic_dataset


def loader_rate(dataset: OVPKLDataset, batch_size: int, workers: int) -> tuple[float, float]:
    """(samples/s after the first batch, which includes the workers' start-up; MB of one batch's tensors)."""
    sampler = StreamingBatchSampler(dataset.sequences, batch_size, world_size=1, rank=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_sparse4d, num_workers=workers)
    samples, started, batch_mb = 0, 0.0, 0.0
    for step, batch in enumerate(loader):
        if step == 1:
            started = time.perf_counter()
        elif step > 1:
            samples += batch["img"].shape[0]
        batch_mb = sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor)) / 1e6
    return samples / (time.perf_counter() - started), batch_mb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--depth-stride", type=int, action="append",
                        help="depth targets pooled to this stride (repeat to compare; default: 4, as the trainer)")
    parser.add_argument("--eval", action="store_true", help="also time the evaluation loader (no augmentation, no depth)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "aicity"
        started = time.perf_counter()
        make_synthetic_dataset(root, cameras=args.cameras, frames=args.frames, size=(width, height), splits=("train",))
        synth_s = time.perf_counter() - started
        config = AICityConfig.model_validate({"root": str(root), "anchor_init_config": {"num_anchor": 64}})
        started = time.perf_counter()
        summary = run_dataset_convert(config, Path(tmp) / "out")
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        run_dataset_convert(config, Path(tmp) / "out")
        warm_s = time.perf_counter() - started

        final_h, final_w = (height // 32) * 32, (width // 32) * 32
        augmentation = AugmentationConfig.model_validate({
            "resize_lim": [0.95, 1.1], "final_dim": [final_h, final_w], "bot_pct_lim": [0.0, 0.05],
            "rot_lim": [-5.4, 5.4], "image_size": [height, width], "rand_flip": True, "rot3d_range": [-0.39, 0.39]})
        def dataset(**options) -> OVPKLDataset:
            return OVPKLDataset(summary.annotation_files, data_root=root / "train",
                                classes=["person", "gr1_t2", "agility_digit", "nova_carter"], augmentation=augmentation,
                                normalize=NormalizeConfig(), **options)

        rates = [(stride, *loader_rate(dataset(sequences_split_num=10, depth_stride=stride), args.batch_size, args.workers))
                 for stride in args.depth_stride or [4]]  # (stride, samples/s, MB per batch) per pass
        if args.eval:  # the evaluation loader: no augmentation, no depth targets (build_dataset's val/test)
            eval_rate = loader_rate(dataset(test_mode=True, with_depth=False), args.batch_size, args.workers)
    frames = summary.frames
    print(f"scene: {args.cameras} cameras x {frames} frames at {width}x{height}; synth {synth_s:.2f} s "
          f"({frames / synth_s:.1f} frames/s)")
    print(f"dataset_convert: cold {frames / cold_s:.1f} frames/s ({frames * args.cameras / cold_s:.1f} camera-frames/s), "
          f"rerun with cached frames {frames / warm_s:.1f} frames/s")
    if args.eval:
        print(f"evaluation dataloader: {eval_rate[0]:.1f} samples/s, {eval_rate[1]:.1f} MB per batch")
    for stride, rate, batch_mb in rates:
        print(f"dataloader, depth stride {stride}: {rate:.1f} samples/s ({rate * args.cameras:.1f} images/s), "
              f"{batch_mb:.1f} MB per batch, batch {args.batch_size}, {args.workers} workers, input {final_w}x{final_h}")


if __name__ == "__main__":
    main()
