"""2-GPU Lightning DDP vs 1 GPU: training samples/s of the default config on synthetic tensors.

Each rank trains the default model (ResNet-101, 1408x512, 6 cameras, 900 anchors + denoising, bf16
mixed precision) on one streamed scene (128 people walking, 30 fps) with the trainer's
LightningModule, batch 2 per GPU; ranks see disjoint samples
(Lightning's DistributedSampler). Run without --devices it runs 1 GPU then all GPUs as separate
processes and prints the scaling factor.

    PYTHONPATH=. python benchmarks/ddp_scaling.py [--steps 40] [--warmup 8] [--batch 2] [--lr 5e-5] [--compile [--compile-mode reduce-overhead]]
        [--graphed-optimizer] [--auto-gc] [--json out.json]
    PYTHONPATH=. python benchmarks/ddp_scaling.py --devices 1 --out one.json ...   # one run only (what the driver starts)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_throughput import NUM_CLASSES, scene_anchors, synthetic_batch  # noqa: E402


class SyntheticFrames(torch.utils.data.Dataset):
    """Per-sample dicts shaped like the OVPKL dataset's output (batch contract in sparse4d/batch.py).

    One scene streamed at 30 fps: `num_gt` people keep their ids and walk at constant velocity, so the
    carried instances and denoising groups have something to follow (boxes re-drawn at random every
    frame under the same ids are not a trainable stream). Images come from a pool of four.
    """

    def __init__(self, length: int, num_gt: int) -> None:
        self.length = length
        self.pool = [synthetic_batch(1, num_gt, step, pin=False) for step in range(4)]
        g = torch.Generator().manual_seed(0)
        self.start = torch.rand(num_gt, 2, generator=g) * 24 - 12
        self.velocity = torch.rand(num_gt, 2, generator=g) * 2 - 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        b = self.pool[index % len(self.pool)]
        sample = {k: (v[0] if isinstance(v, (torch.Tensor, list)) else v) for k, v in b.items()}
        time = index / 30.0
        boxes = sample["gt_bboxes_3d"].clone()
        boxes[:, 0:2] = torch.remainder(self.start + self.velocity * time + 12, 24) - 12  # walk, wrapping inside the rig
        boxes[:, 7:9] = self.velocity
        sample["gt_bboxes_3d"] = boxes
        sample["gt_labels_3d"] = self.pool[0]["gt_labels_3d"][0]
        sample["timestamp"] = time
        sample["first_frame"] = index == 0
        return sample


def run_one(devices: int, steps: int, warmup: int, batch: int, out_path: str | None, find_unused: bool, compile_mode: str | None = None,
            lr: float | None = None, graphed_optimizer: bool = False, auto_gc: bool = False) -> None:
    """One Lightning fit on `devices` GPUs; `compile_mode` None: eager, else the regions compiled as
    train.compile does ("default" or "reduce-overhead", which marks CUDA-graph steps as the trainer)."""
    import pytorch_lightning as pl

    from sparse4d.config.model import ModelConfig
    from sparse4d.config.train import TrainConfig
    from sparse4d.data.collate import collate_sparse4d
    from sparse4d.engine.lightning_module import Sparse4DLightning
    from sparse4d.model.fused_aggregation import enable_fused_aggregation
    from sparse4d.model.sparse4d import Sparse4D

    torch.backends.cudnn.benchmark = True
    enable_fused_aggregation()
    cfg = ModelConfig()
    model = Sparse4D.from_config(cfg, NUM_CLASSES, anchors=scene_anchors(cfg.head.instance_bank.num_anchor))
    model = model.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        from sparse4d.engine.compile import compile_regions

        compile_regions(model, None if compile_mode == "default" else compile_mode)
    optim = TrainConfig().optim
    if lr is not None:
        optim = optim.model_copy(update={"lr": lr})
    module = Sparse4DLightning(model, optim, total_steps=steps + warmup, cuda_graph_steps=compile_mode == "reduce-overhead",
                               graphed_optimizer=graphed_optimizer)
    total = (steps + warmup) * batch * devices
    loader = torch.utils.data.DataLoader(SyntheticFrames(total, 128), batch_size=batch, collate_fn=collate_sparse4d,
                                         num_workers=4, pin_memory=True, persistent_workers=True)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.start = None
            self.end = None
            self.final_loss = None  # the last step's loss: the timed steps must have trained on finite values

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            if batch_idx == warmup - 1:
                torch.cuda.synchronize()
                self.start = time.perf_counter()
            if batch_idx == warmup + steps - 1:
                torch.cuda.synchronize()
                self.end = time.perf_counter()
                self.final_loss = float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else None

    clock = Clock()
    from pytorch_lightning.strategies import DDPStrategy

    from sparse4d.engine.scheduled_gc import ScheduledGarbageCollection
    strategy = DDPStrategy(find_unused_parameters=find_unused) if devices > 1 else "auto"  # as sparse4d/engine/train.py
    trainer = pl.Trainer(accelerator="gpu", devices=devices, strategy=strategy, precision="bf16-mixed",
                         max_steps=steps + warmup, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[clock] if auto_gc else [clock, ScheduledGarbageCollection()],  # as train.py
                         gradient_clip_val=None, use_distributed_sampler=True)
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        seconds = clock.end - clock.start
        record = {"devices": devices, "lr": float(optim.lr), "find_unused_parameters": find_unused, "compile_mode": compile_mode,
                  "graphed_optimizer": graphed_optimizer, "auto_gc": auto_gc, "batch_per_gpu": batch, "steps": steps, "seconds": seconds,
                  "samples_per_s": steps * batch * devices / seconds, "final_loss": clock.final_loss, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9}
        if out_path:
            with open(out_path, "w") as fh:
                json.dump(record, fh)
        else:
            print(json.dumps(record, indent=1))


def child_command(args: argparse.Namespace, devices: int, out: str) -> list[str]:
    """The command of one run on `devices` GPUs, with every option of this one."""
    flags = [("--find-unused", args.find_unused), ("--compile", args.compile), ("--graphed-optimizer", args.graphed_optimizer),
             ("--auto-gc", args.auto_gc)]
    return [sys.executable, __file__, "--devices", str(devices), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--out", out, "--compile-mode", args.compile_mode,
            *(flag for flag, on in flags if on), *(["--lr", str(args.lr)] if args.lr else [])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=0, help="0 = run 1 GPU, then all GPUs")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--find-unused", action="store_true", help="DDP find_unused_parameters=True")
    parser.add_argument("--compile", action="store_true", help="compile the regions as train.compile does (sparse4d.engine.compile)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead"), default="default",
                        help="with --compile: torch.compile's mode (reduce-overhead replays each region as CUDA graphs)")
    parser.add_argument("--graphed-optimizer", action="store_true",
                        help="the trainer's clip + AdamW replayed as one CUDA graph (Sparse4DLightning(graphed_optimizer=True))")
    parser.add_argument("--auto-gc", action="store_true", help="keep Python's automatic garbage collection (the trainer pauses it)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the trainer's)")
    parser.add_argument("--out", help="result file of a --devices run (printed when not given)")
    parser.add_argument("--json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.devices:
        run_one(args.devices, args.steps, args.warmup, args.batch, args.out, args.find_unused, args.compile_mode if args.compile else None,
                args.lr, args.graphed_optimizer, args.auto_gc)
        return 0
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"needs at least 2 GPUs, found {gpus}", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, gpus):
            out = os.path.join(tmp, f"{devices}.json")
            subprocess.run(child_command(args, devices, out), check=True)
            with open(out) as fh:
                results[devices] = json.load(fh)
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": results,
              "scaling": results[gpus]["samples_per_s"] / results[1]["samples_per_s"], "gpus": gpus}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
