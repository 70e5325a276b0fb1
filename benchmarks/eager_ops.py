"""Eager work between the compiled regions of a training step, counted on the CPU.

With `train.compile=reduce-overhead` each compiled region (backbone, neck, feature packing, one per
decoder layer, the losses) replays as a CUDA graph, and every aten op outside them is a kernel that
Python issues one at a time. The GPU step is host-bound (benchmarks/README.md, session 8), so this
count, and the number of region calls, is what host-side work has to reduce. It needs no GPU: the
regions run with the `aot_eager` backend (same regions and forward/backward split as Inductor, eager
kernels, no C++ compiler) and the profiler assigns every aten op to a region (nested in a compiled
function, forward or backward) or to the eager glue. Ops that launch no kernel (views, empty
allocations) are counted apart. Counts depend on the head (queries, layers, denoising), not on the
image size, so the default head runs at a small image size.

    PYTHONPATH=. python benchmarks/eager_ops.py                   # default config, 352x128 images
    PYTHONPATH=. python benchmarks/eager_ops.py --top 30 --json eager_ops.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import NUM_CLASSES, scene_anchors, synthetic_batch  # noqa: E402

from sparse4d.config.model import ModelConfig  # noqa: E402
from sparse4d.config.train import TrainConfig  # noqa: E402
from sparse4d.engine.compile import compile_regions  # noqa: E402
from sparse4d.model.sparse4d import Sparse4D  # noqa: E402

# aten ops that only make a view, an empty tensor or metadata: no kernel on the GPU
NO_KERNEL = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::slice", "aten::select", "aten::as_strided",
    "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::expand_as", "aten::permute", "aten::transpose",
    "aten::t", "aten::detach", "aten::detach_", "aten::alias", "aten::_unsafe_view", "aten::split",
    "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::narrow", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::resize_", "aten::lift_fresh", "aten::view_as", "aten::flatten",
    "aten::unflatten", "aten::to", "aten::contiguous", "aten::numpy_T", "aten::movedim", "aten::result_type",
    "aten::is_nonzero", "aten::size", "aten::stride", "aten::requires_grad_", "aten::set_", "aten::_has_compatible_shallow_copy_type",
}
# events of a compiled function's own execution (forward, or its backward node's apply); autograd
# sums gradients after a node inside "autograd::engine::evaluate_function: <node>", which is eager work
REGION_MARKERS = ("CompiledFunction", "Torch-Compiled Region")


def classify(events) -> tuple[Counter, Counter, Counter, Counter, int]:
    """(eager kernel ops by name, by autograd node (backward) or 'forward', by the innermost sparse4d
    source line, no-kernel eager ops, region calls). An eager op is an aten op outside every compiled
    function with no aten op above it."""
    kernels, contexts, lines, views = Counter(), Counter(), Counter(), Counter()
    regions = 0
    children: dict[int, list] = {}
    for event in events:
        if event.cpu_parent is not None:
            children.setdefault(id(event.cpu_parent), []).append(event)
    for event in events:
        regions += event.name in ("CompiledFunction", "CompiledFunctionBackward")
        if not event.name.startswith("aten::"):
            continue
        parent, context, inside = event.cpu_parent, "forward", False
        while parent is not None:
            if parent.name.startswith(("aten::", *REGION_MARKERS)):
                inside = True
                break
            if parent.name.startswith("autograd::engine::evaluate_function: "):
                context = parent.name.split(": ", 1)[1]
            parent = parent.cpu_parent
        if inside:
            continue
        if launches_kernel(event, children):
            kernels[event.name] += 1
            contexts[context] += 1
            lines[source_line(event)] += 1
        else:
            views[event.name] += 1
    return kernels, contexts, lines, views, regions


def source_line(event) -> str:
    """The innermost Python frame of this package above the op (the profiler's Python-function events
    are its parents under with_stack=True), else the innermost frame at all."""
    innermost = None
    parent = event.cpu_parent
    while parent is not None:
        name = parent.name
        if ".py(" in name:
            innermost = innermost or name
            if "sparse4d/" in name and "site-packages" not in name:
                return name[name.index("sparse4d/"):]
        parent = parent.cpu_parent
    return innermost or "(no Python frame: autograd engine)"


def launches_kernel(event, children: dict[int, list]) -> bool:
    """Whether any aten op in the event's subtree does work (is not a view, allocation or wrapper)."""
    below = [e for e in children.get(id(event), []) if e.name.startswith("aten::")]
    if not below:
        return event.name not in NO_KERNEL
    return any(launches_kernel(e, children) for e in below)


def cpu_training_step(*, backbone: str = "resnet_101", width: int = 352, height: int = 128, batch: int = 2, num_gt: int = 128,
                      num_anchor: int = 900, compiled: bool = True, with_model: bool = False):
    """train_throughput's step on the CPU (prepared host batch, clip, fused AdamW) for the default head,
    its regions compiled with `aot_eager`; step k trains on the k-th of four streamed frames (mod 4).
    A smaller backbone or `num_anchor` runs faster; what happens outside the regions stays the same.
    Returns the step function, and the model too with `with_model` (to compile it another way)."""
    torch.manual_seed(0)
    cfg = ModelConfig().model_copy(update={"input_shape": [width, height]})
    if backbone != "resnet_101":
        channels = [64, 128, 256, 512] if backbone == "resnet_18" else [256, 512, 1024, 2048]
        cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"type": backbone}),
                                     "neck": cfg.neck.model_copy(update={"in_channels": channels})})
    if num_anchor != cfg.head.instance_bank.num_anchor:
        bank = cfg.head.instance_bank.model_copy(update={"num_anchor": num_anchor, "num_temp_instances": num_anchor * 2 // 3})
        cfg = cfg.model_copy(update={"head": cfg.head.model_copy(update={"instance_bank": bank})})
    model = Sparse4D.from_config(cfg, NUM_CLASSES, anchors=scene_anchors(cfg.head.instance_bank.num_anchor)).train()
    if compiled:
        compile_regions(model, backend="aot_eager")
    optim = TrainConfig().optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(optim.lr), weight_decay=float(optim.weight_decay), fused=True)
    max_norm = float(optim.grad_clip.max_norm)
    batches = [synthetic_batch(batch, num_gt, step, pin=False, width=width, height=height) for step in range(4)]

    def train_step(step: int) -> None:
        frame = batches[step % len(batches)]
        losses = model.loss(model(frame), frame)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"] if p.grad is not None], max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return (train_step, model) if with_model else train_step


def warm_up(train_step: Callable[[int], None], steps: int = 3) -> None:
    """First frame, first temporal frame (the regions compile), one more; progress on stderr."""
    for step in range(steps):
        begin = time.perf_counter()
        train_step(step)
        print(f"warm-up step {step}: {time.perf_counter() - begin:.1f} s", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-gt", type=int, default=128, help="GT boxes per sample (128 fills max_dn_gt, as train_throughput)")
    parser.add_argument("--width", type=int, default=352)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--backbone", default="resnet_101", choices=("resnet_18", "resnet_50", "resnet_101"),
                        help="a smaller backbone runs faster on the CPU; the counts outside the regions do not change")
    parser.add_argument("--eager", action="store_true", help="no compiled regions: every op is eager")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json")
    args = parser.parse_args()
    train_step = cpu_training_step(backbone=args.backbone, width=args.width, height=args.height, batch=args.batch,
                                   num_gt=args.num_gt, compiled=not args.eager)
    warm_up(train_step)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True) as prof:
        train_step(3)
    kernels, contexts, lines, views, regions = classify(prof.events())
    record = {
        "compiled": not args.eager, "batch": args.batch, "num_gt": args.num_gt, "torch": torch.__version__,
        "eager_kernel_ops": sum(kernels.values()), "eager_view_ops": sum(views.values()), "region_calls": regions,
        "by_op": dict(kernels.most_common(args.top)), "by_context": dict(contexts.most_common(args.top)),
        "by_source_line": dict(lines.most_common(args.top)),
    }
    print(f"eager ops that launch kernels: {record['eager_kernel_ops']}  (views/allocations: {record['eager_view_ops']}); "
          f"compiled-function calls (forward + backward): {regions}")
    print("\nby op:")
    for name, count in kernels.most_common(args.top):
        print(f"  {count:6d}  {name}")
    print("\nby autograd node (backward) or forward:")
    for name, count in contexts.most_common(args.top):
        print(f"  {count:6d}  {name}")
    print("\nby source line:")
    for name, count in lines.most_common(args.top):
        print(f"  {count:6d}  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
