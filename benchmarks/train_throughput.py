"""Training throughput of the default Sparse4D config on one GPU, with a time split.

Default config: ResNet-101, 1408x512 input, 6 cameras, 900 anchors + denoising (5 groups x 128 GT,
positive and negative: 2180 queries), bf16 autocast, batch 2, AdamW + grad clipping as the trainer.
Frames are streamed (first_frame only on the first step), so the temporal path (600 carried
instances, temporal denoising) runs as in real training.

Prints samples/s, model FLOPs utilisation (FLOPs counted by torch.utils.flop_counter), peak memory,
the number of host syncs in one step, the time split (data, backbone+neck, head, aggregation,
depth, loss incl. matching, optimizer; CUDA events), and the backbone+neck-only step at the same
batch measured in the same run. Compiled regions leave no place for those events inside them: with
--compile the events time only the phases (data, forward, loss, backward, optimizer), and
`--profile --trace` gives the split by part from the profiled kernels instead
(`profile.gpu_ms_per_step_by_part`, benchmarks/part_split.py).

    PYTHONPATH=. python benchmarks/train_throughput.py [--batch 2] [--steps 20] [--reference-aggregation]
        [--no-channels-last] [--fp32] [--fused-adam] [--compile-backbone | --compile [--compile-mode reduce-overhead]] [--json out.json]

`--data real` measures the trainer's own path instead of pinned synthetic tensors: synthetic AICity
scenes at the default size (benchmarks/synthetic_scenes.py: 6 cameras, 1408x512, generated in
parallel and converted to OVPKL once per --workdir) feed the trainer's Sparse4DDataModule loader with
--workers processes (JPEG decode, depth read, augmentation and normalisation run in the workers), and
each step is the trainer's: `build_model`, `Sparse4DLightning.training_step` under bf16 autocast,
backward, its gradient clipping, optimizer and schedule. It reports samples/s, the time each step
waits on the loader (blocked in next()), the loader's own rate with no model running, and whether
the loader keeps up. Real scenes carry about 5 boxes per sample, not 128, so the head is lighter than
in the synthetic-tensor mode.

    PYTHONPATH=. python benchmarks/train_throughput.py --data real --batch 8 --workers 10 --steps 30 --json real.json
    PYTHONPATH=. python benchmarks/train_throughput.py --data real --smoke     # CPU, tiny scenes, small config
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gpu_idle import GpuActivity, gpu_only_profile, longest_gaps  # noqa: E402  (benchmarks/, next to this script)
from gpu_idle import idle_gaps as gpu_idle_gaps  # noqa: E402
from host_clock import HostClock  # noqa: E402
from part_split import AGGREGATION_KERNELS, OPTIMIZER_SCOPES, PART_PREFIX, annotate, gpu_ms_by_part, part  # noqa: E402

from sparse4d.batch import TARGET_KEYS
from sparse4d.config.dataset import NormalizeConfig
from sparse4d.config.model import ModelConfig
from sparse4d.config.train import TrainConfig
from sparse4d.data.depth_targets import first_level_stride
from sparse4d.engine.graphed_step import GraphedOptimizerStep
from sparse4d.engine.optim import build_optimizer
from sparse4d.engine.runloop import move_batch
from sparse4d.model import aggregation
from sparse4d.model import fused_aggregation
from sparse4d.model import matching
from sparse4d.model.fused_aggregation import enable_fused_aggregation
from sparse4d.model.sparse4d import Sparse4D

WIDTH, HEIGHT, CAMERAS, NUM_CLASSES = 1408, 512, 6, 4
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM datasheet)


def camera_projection(position: tuple[float, float, float], yaw: float, focal: float,
                      width: int = WIDTH, height: int = HEIGHT) -> torch.Tensor:
    """K @ world_to_camera for a level camera at `position` looking along `yaw`."""
    fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    down = torch.tensor([0.0, 0.0, -1.0])
    right = torch.linalg.cross(down, fwd)
    rot = torch.stack([right, down, fwd])
    w2c = torch.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ torch.tensor(position)
    k = torch.eye(4)
    k[0, 0] = k[1, 1] = focal
    k[0, 2], k[1, 2] = width / 2, height / 2
    return k @ w2c


def scene_anchors(num: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((num, 11), dtype=np.float32)
    a[:, 0:2] = rng.uniform(-15, 15, (num, 2))
    a[:, 2] = 0.9
    a[:, 3:6] = np.log([0.6, 0.6, 1.7])
    a[:, 7] = 1.0
    return a


def synthetic_batch(batch: int, num_gt: int, step: int, seed: int = 0, pin: bool = True,
                    width: int = WIDTH, height: int = HEIGHT) -> dict:
    """Six cameras on a 25 m ring looking at the centre; num_gt people per sample; pinned CPU tensors."""
    g = torch.Generator().manual_seed(seed + step)
    focal = 700.0 * width / WIDTH
    proj = torch.stack([camera_projection((25 * math.cos(a), 25 * math.sin(a), 3.0), a + math.pi, focal, width, height)
                        for a in np.linspace(0, 2 * math.pi, CAMERAS, endpoint=False)])
    boxes, labels, ids = [], [], []
    for _ in range(batch):
        b = torch.zeros(num_gt, 10)
        b[:, 0:2] = torch.rand(num_gt, 2, generator=g) * 24 - 12
        b[:, 2] = 0.9
        b[:, 3:6] = torch.tensor([0.6, 0.6, 1.7])
        b[:, 6] = torch.rand(num_gt, generator=g) * 6 - 3
        b[:, 7:9] = torch.rand(num_gt, 2, generator=g) - 0.5
        boxes.append(b)
        labels.append(torch.randint(0, NUM_CLASSES, (num_gt,), generator=g))
        ids.append(torch.arange(num_gt) + 100)
    # depth targets as the trainer's dataset hands them over: pooled to the first FPN level's stride
    stride = first_level_stride(ModelConfig().neck.start_level)
    depth_hw = (-(-height // stride), -(-width // stride))
    depth = torch.rand(batch, CAMERAS, *depth_hw, generator=g) * 30
    depth = depth * (torch.rand(batch, CAMERAS, *depth_hw, generator=g) > 0.7)
    out = {
        # uint8 pixels and their normalisation, as the dataset hands them over (normalised on the GPU)
        "img": torch.randint(0, 256, (batch, CAMERAS, 3, height, width), dtype=torch.uint8, generator=g),
        "img_mean": torch.tensor(NormalizeConfig().mean).expand(batch, 3).clone(),
        "img_std": torch.tensor(NormalizeConfig().std).expand(batch, 3).clone(),
        "projection_mat": proj[None].expand(batch, -1, -1, -1).clone(),
        "image_wh": torch.tensor([float(width), float(height)]).expand(batch, CAMERAS, 2).clone(),
        "timestamp": torch.full((batch,), step / 30.0, dtype=torch.float64),
        "first_frame": torch.full((batch,), step == 0),
        "gt_bboxes_3d": boxes, "gt_labels_3d": labels, "instance_ids": ids, "gt_depth": depth,
        "sample_token": [f"s/{i}/{step:06d}" for i in range(batch)], "scene": ["s"] * batch,
    }
    if not pin:
        return out
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) else [t.pin_memory() for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
            for k, v in out.items()}


# Whether the GT lists stay on the host, as the trainer leaves them (`data_module.transfer_batch_to_device`):
# the denoising assignment is then solved from host data; False moves them with the rest (its
# costs are then computed on the GPU and copied back, behind whatever the GPU still runs).
GT_ON_HOST = True


def to_device(batch: dict, device: torch.device) -> dict:
    return move_batch(batch, device, keep=TARGET_KEYS if GT_ON_HOST else ())


def emit(record: dict, json_path: str | None) -> None:
    """Print the record as JSON (and write it to json_path when given)."""
    save_json(record, json_path)
    print(json.dumps(record, indent=1))


def save_json(record: dict, json_path: str | None) -> None:
    """Write the record to json_path (when given) through a temporary file: a run cut off by its
    time limit leaves the last whole record, never half of one."""
    if json_path:
        partial = Path(f"{json_path}.tmp")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(json_path)


# profiled steps label the step's phases and the compiled regions as model parts (part_split.py); the
# forward outside the regions (instance bank, denoising, anchors, the matching's start) is the head's
PHASE_PARTS = {"data": "data", "forward_total": "head", "loss": "loss", "optimizer": "optimizer"}
REGION_PARTS = {"encode_images": "backbone_neck", "decoder_layer": "head", "decoder_losses": "loss", "matching_costs": "loss"}
HEAD_REGIONS = ("decoder_layer", "prepare_levels")  # set on model.head; the others on the model


def region_owner(model: Sparse4D, attr: str) -> object:
    return model.head if attr in HEAD_REGIONS else model


def compiled_regions(model: Sparse4D) -> list[tuple[object, str]]:
    """(owner, attribute) of the functions compile_regions compiled. Only those may be wrapped: a
    Python wrapper around a function that runs inside a region (`prepare_levels` inside
    `encode_images`) is traced into that region, breaks its graph and recompiles it every step."""
    candidates = [(region_owner(model, attr), attr) for attr in (*REGION_PARTS, "prepare_levels")]
    return [(owner, attr) for owner, attr in candidates if hasattr(vars(owner).get(attr), "_torchdynamo_orig_callable")]


def is_gpu_range(name: str) -> bool:
    """A profiler range mirrored on the GPU timeline (part labels, torch.optim's own ranges): its
    "device time" spans kernels that are counted on their own, so it must not be added to them."""
    return name.startswith((PART_PREFIX, *OPTIMIZER_SCOPES, "ProfilerStep"))


def region_parts(model: Sparse4D) -> list[tuple[object, str, str]]:
    """(owner, attribute, part) of the model's regions for part_split.annotate."""
    return [(region_owner(model, attr), attr, name) for attr, name in REGION_PARTS.items()]


class Timeline:
    """CUDA events per named region, summed per step (regions may repeat within a step); with
    `label_parts`, each phase of PHASE_PARTS also runs in its part's profiler range."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.open: dict[str, list[torch.cuda.Event]] = defaultdict(list)
        self.enabled = False
        self.label_parts = False

    def start(self, name: str) -> None:
        if self.enabled:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.open[name].append(ev)

    def stop(self, name: str) -> None:
        if self.enabled and self.open[name]:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pairs.append((name, self.open[name].pop(), ev))

    @contextlib.contextmanager
    def region(self, name: str):
        self.start(name)
        label = PHASE_PARTS.get(name) if self.label_parts else None
        try:
            with part(label) if label else contextlib.nullcontext():
                yield
        finally:
            self.stop(name)

    def collect(self) -> dict[str, float]:
        torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for name, a, b in self.pairs:
            totals[name] += a.elapsed_time(b)
        self.pairs.clear()
        return dict(totals)


def instrument(model: Sparse4D, timeline: Timeline) -> None:
    """Forward hooks on the parts, autograd markers around aggregation and at the neck outputs."""
    for name, module in (("backbone_fwd", model.backbone), ("neck_fwd", model.neck), ("head_fwd", model.head), ("depth_fwd", model.depth_branch)):
        if module is None:
            continue
        module.register_forward_pre_hook(lambda *_a, n=name: timeline.start(n))
        module.register_forward_hook(lambda *_a, n=name: timeline.stop(n))

    class Marker(torch.autograd.Function):
        @staticmethod
        def forward(ctx, name, *tensors):
            ctx.name = name
            return tuple(t.view_as(t) for t in tensors)  # always a tuple, also of one

        @staticmethod
        def backward(ctx, *grads):
            (timeline.start if ctx.name.endswith("<") else timeline.stop)(ctx.name.rstrip("<>"))
            return (None, *grads)

    inner = aggregation.select_aggregation_impl

    def timed_select(device, prefer_fused=True):
        fn = inner(device, prefer_fused)

        def run(feature_maps, points, weights):
            if isinstance(feature_maps, aggregation.PackedLevels):  # the fused kernel reads the packed buffer
                feature_maps = feature_maps._replace(packed=Marker.apply("aggregation_bwd>", feature_maps.packed)[0])
            else:
                feature_maps = list(Marker.apply("aggregation_bwd>", *feature_maps))
            timeline.start("aggregation_fwd")
            out = fn(feature_maps, points, weights)
            timeline.stop("aggregation_fwd")
            return Marker.apply("aggregation_bwd<", out)[0]
        return run

    import sparse4d.model.deformable as deformable
    deformable.select_aggregation_impl = timed_select

    def neck_grad_marker(_module, _inputs, outputs):
        if not torch.is_grad_enabled():
            return outputs
        return list(Marker.apply("head_bwd>", *outputs))
    model.neck.register_forward_hook(neck_grad_marker)


def count_syncs(fn) -> Counter:
    """Host syncs in one call of fn, by source line (torch.cuda sync debug mode)."""
    sites: Counter = Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    import traceback  # noqa: F401 (the warning carries file and line)
    for w in caught:
        if "synchroniz" in str(w.message):
            sites[f"{w.filename.split('sparse4d/')[-1]}:{w.lineno}"] += 1
    return sites


def profile_steps(step, count: int, trace_path: str | None = None) -> dict:
    """GPU busy share of the wall time and the top ops by host time and by GPU time."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    start = time.perf_counter()
    # with a trace, Python frames too: trace_gaps.py then names the host code behind each GPU idle gap
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=bool(trace_path)) as prof:
        for _ in range(count):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1000  # before the profiler stops and processes its events
    if trace_path:  # a Chrome/Perfetto trace, gzipped when the name ends in .gz
        prof.export_chrome_trace(trace_path)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not is_gpu_range(e.key)]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1000
    cpu_ops = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU), key=lambda e: -e.self_cpu_time_total)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    gap_causes = by_part = None
    if trace_path:
        from trace_gaps import explain_gaps, load_trace

        trace = load_trace(trace_path)
        gap_causes = explain_gaps(trace, top=8, min_ms=0.5)
        by_part = gpu_ms_by_part(trace, count)
    return {
        "gap_causes": gap_causes, "gpu_ms_per_step_by_part": by_part,
        "wall_ms_per_step": round(wall_ms / count, 1), "gpu_kernel_ms_per_step": round(gpu_ms / count, 1),
        "gpu_busy_share": round(gpu_ms / wall_ms, 3), "kernel_launches_per_step": launches // count,
        "top_host_ops_ms_per_step": {e.key[:50]: round(e.self_cpu_time_total / 1000 / count, 2) for e in cpu_ops[:15]},
        "top_gpu_kernels_ms_per_step": {e.key[:70]: round(e.self_device_time_total / 1000 / count, 2)
                                        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:40]},
        "gpu_ms_per_step_by_kind": kernel_kinds(kernels, count),
        "largest_gpu_idle_gaps": idle_gaps(prof.events()),
    }


def phase_medians(marks: list[tuple[str, float]], match_waits: list[float]) -> dict[str, float]:
    """Median host ms from each phase mark to the next (a step's phases end at "forward_queued",
    "loss_queued", "backward_queued", "optimizer_queued"; the next "start" closes the step), and the
    main thread's wait in the matching. Host time that is not waiting, summed over a step, below the
    step's wall time means the GPU was the bound; equal to it, the host."""
    phases: dict[str, list[float]] = defaultdict(list)
    for (name, t), (_, t_next) in zip(marks, marks[1:]):
        phases[f"{name}->next"].append((t_next - t) * 1000)
    out = {k: round(statistics.median(v), 2) for k, v in phases.items()}
    out["matching_wait"] = round(statistics.median(match_waits) * 1000, 2) if match_waits else 0.0
    return out


def gpu_lag_medians(marks: list[tuple[str, float]], gpu_ms: list[float], origin_host: float) -> dict[str, float]:
    """Median ms, per phase mark, by which the GPU reached the mark after the host queued it.

    marks: (name, host clock) of each mark; gpu_ms: when the GPU reached an event recorded at that
    mark, in ms after an origin event recorded at host clock `origin_host` on an idle GPU. A lag near
    0 means the GPU had run out of queued work there and waited for the host; a large one, that the
    host was ahead (a step whose lags never come near 0 is GPU-bound)."""
    lags: dict[str, list[float]] = defaultdict(list)
    for (name, host), gpu in zip(marks, gpu_ms, strict=True):
        lags[name].append(gpu - (host - origin_host) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in lags.items()}


def host_profile_steps(step, count: int, stats_path: str) -> dict:
    """Main-thread host time by Python function over `count` steps (cProfile; the autograd engine's
    backward thread is not seen, only the main thread's wait in `backward()`)."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(count):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    wall_ms = (time.perf_counter() - start) * 1000 / count
    profiler.dump_stats(stats_path)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)

    def label(key) -> str:
        file, line, name = key
        return f"{Path(file).name}:{line}:{name}" if line else name

    def top(column: int) -> dict[str, float]:
        rows = sorted(stats.items(), key=lambda kv: -kv[1][column])[:30]
        return {label(k): round(v[column] * 1000 / count, 2) for k, v in rows}

    return {"wall_ms_per_step_under_cprofile": round(wall_ms, 1), "self_ms_per_step": top(2), "cumulative_ms_per_step": top(3)}


def idle_gaps(events, top: int = 15) -> list[str]:
    """The longest stretches with no kernel running, each as 'ms: kernel before -> kernel after'."""
    kernels = sorted((GpuActivity(e.time_range.start, e.time_range.end - e.time_range.start, e.name)
                      for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda a: a.start_us)
    return longest_gaps(gpu_idle_gaps(kernels), top, name_width=45) if kernels else []


KERNEL_KINDS = (  # first match wins; names as CUDA, cuDNN, cuBLAS, Triton and Inductor print them
    ("fused aggregation", AGGREGATION_KERNELS),
    ("sort / searchsorted", ("sort", "Sort", "searchsorted")),
    ("batch norm", ("bn_", "batch_norm", "batchnorm", "BatchNorm")),
    ("convolution", ("conv", "Conv", "implicit", "wgrad", "dgrad", "fprop", "cudnn")),
    ("matmul", ("gemm", "Gemm", "xmma", "cutlass", "sm90", "cublas")),
    ("inductor fused", ("triton_",)),
    ("copy / fill", ("copy", "Copy", "fill", "Fill", "memcpy", "Memcpy", "memset")),
    ("reduction", ("reduce", "Reduce")),
)


def kernel_kinds(kernels: list, count: int) -> dict[str, float]:
    """GPU ms per step grouped by what the kernels do (names matched against KERNEL_KINDS)."""
    totals: dict[str, float] = defaultdict(float)
    for e in kernels:
        kind = next((k for k, needles in KERNEL_KINDS if any(n in e.key for n in needles)), "other elementwise")
        totals[kind] += e.self_device_time_total / 1000 / count
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


@dataclasses.dataclass
class Switches:
    """What the --ab toggles flip: the model's settings and the optimizer step the training step runs."""

    model: Sparse4D
    optimizer_step: GraphedOptimizerStep | None = None  # None: clip + the optimizer's own step
    graphed_step: GraphedOptimizerStep | None = None  # the graphed clip + AdamW that `graphed-optimizer` swaps in
    solver_pools: dict[bool, ThreadPoolExecutor] = dataclasses.field(default_factory=dict)  # `solver-workers`: few? -> pool
    losses: dict[bool, object] = dataclasses.field(default_factory=dict)  # `losses-graphs`: replayed as a CUDA graph? -> compiled losses


def _set_stacked(switches: Switches, on: bool) -> None:
    switches.model.head.anchor_encoder.stack_branches = on


def _set_gt_on_host(switches: Switches, on: bool) -> None:
    global GT_ON_HOST
    GT_ON_HOST = on


def _set_graphed_optimizer(switches: Switches, on: bool) -> None:
    switches.optimizer_step = switches.graphed_step if on else None


def _set_short_switch_interval(switches: Switches, on: bool) -> None:
    sys.setswitchinterval(SHORT_SWITCH_INTERVAL_S if on else DEFAULT_SWITCH_INTERVAL_S)


def _set_few_solver_workers(switches: Switches, on: bool) -> None:
    if not switches.solver_pools:
        switches.solver_pools = {False: matching.solver_pool(), True: ThreadPoolExecutor(FEW_SOLVER_WORKERS, thread_name_prefix="hungarian")}
    matching._solver_pool = switches.solver_pools[on]  # both the layer matcher and the denoising solves look it up per call


def _set_graphed_losses(switches: Switches, on: bool) -> None:
    switches.model.decoder_losses = switches.losses[on]


# Why these two: every torch call on the main thread gives up the GIL and must take it back; a
# Hungarian worker holding it in Python code keeps the main thread waiting until it lets go, at the
# latest after the switch interval (5 ms default). Session 16 measured both flat: the step is GPU-bound.
DEFAULT_SWITCH_INTERVAL_S = sys.getswitchinterval()
SHORT_SWITCH_INTERVAL_S = 2e-4
FEW_SOLVER_WORKERS = 2

# --ab NAME: (read the setting, set it, names of its on and off states) of what the in-process A/B flips
AB_TOGGLES = {
    "anchor-encoder": (lambda s: s.model.head.anchor_encoder.stack_branches, _set_stacked, ("stacked", "branches")),
    "denoising-costs": (lambda s: GT_ON_HOST, _set_gt_on_host, ("host", "device")),
    "graphed-optimizer": (lambda s: s.optimizer_step is not None, _set_graphed_optimizer, ("graphed", "base")),
    "switch-interval": (lambda s: sys.getswitchinterval() < DEFAULT_SWITCH_INTERVAL_S, _set_short_switch_interval, ("short", "default")),
    "solver-workers": (lambda s: matching.solver_pool() is s.solver_pools.get(True), _set_few_solver_workers, ("few", "default")),
    "losses-graphs": (lambda s: s.model.decoder_losses is s.losses.get(True), _set_graphed_losses, ("graphed", "launched")),
}


def apply_inductor_config(settings: list[str]) -> dict[str, object]:
    """Set each KEY=VALUE (VALUE a Python literal) in torch._inductor.config; returns what was set.
    A key Inductor does not have is an error, not a silently ignored attribute."""
    import ast

    import torch._inductor.config as inductor_config

    applied: dict[str, object] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"--inductor {setting!r}: expected KEY=VALUE, e.g. coordinate_descent_tuning=True")
        *path, name = key.strip().split(".")
        owner = inductor_config
        for section in path:
            owner = getattr(owner, section, None)
        if owner is None or not hasattr(owner, name):
            raise ValueError(f"--inductor {setting!r}: torch._inductor.config has no {key.strip()!r} in torch {torch.__version__}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"--inductor {setting!r}: the value must be a Python literal (True, 4, 'name')") from None
        setattr(owner, name, value)
        applied[key.strip()] = value
    return applied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-gt", type=int, default=128, help="GT boxes per sample (128 fills max_dn_gt: 2180 queries)")
    parser.add_argument("--reference-aggregation", action="store_true", help="grid_sample instead of the fused kernel")
    parser.add_argument("--pixel-backward", choices=("segments", "chunks"), default=None,
                        help="the fused backward's per-pixel summation (fused_aggregation.PIXEL_BACKWARD; default: the module's)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--fused-adam", action="store_true", help="one AdamW(fused=True) group instead of the trainer's optimizer (which is also fused on a GPU since session 10, with separate backbone and head lr groups)")
    parser.add_argument("--graphed-optimizer", action="store_true",
                        help="clip + fused AdamW (capturable, tensor lr) as one CUDA-graph replay (sparse4d.engine.graphed_step): "
                             "autograd's gradients are copied into the graph's buffers with one multi-tensor copy, then released")
    parser.add_argument("--anchor-encoder", choices=("stacked", "branches"), default=None,
                        help="the anchor encoder's training path: its four MLPs stacked side by side (block-diagonal Linears, "
                             "per-segment LayerNorms; what --compile does since session 14) or one after another (eager runs, and "
                             "--compile before); default: what the run's compilation sets")
    parser.add_argument("--ab", nargs="+", choices=sorted(AB_TOGGLES), default=[],
                        help="after the timed steps, for each NAME in turn, alternate blocks of --steps steps with that setting flipped "
                             "and as it was, in the same process (anchor-encoder: stacked / per-branch, the decoder layer compiles once "
                             "per path; denoising-costs: the GT left on the host and the denoising costs computed there / the GT moved to "
                             "the GPU and the costs computed there; graphed-optimizer: clip + AdamW replayed as one CUDA graph / the "
                             "optimizer stepped eagerly; switch-interval: the GIL switch interval 0.2 ms / Python's 5 ms; "
                             "solver-workers: 2 Hungarian worker threads / the default pool of up to 8; losses-graphs (with --compile): the decoder "
                             "losses replayed from a CUDA graph / their compiled kernels launched one by one, which start the GPU "
                             "sooner after the matching wait); results under ab.NAME")
    parser.add_argument("--auto-gc", action="store_true",
                        help="keep Python's automatic garbage collection on (before session 12; the trainer now pauses it and "
                             "collects the young generation every 50 steps)")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                        help="set torch._inductor.config KEY (dotted for sub-configs) before compiling, e.g. coordinate_descent_tuning=True; "
                             "repeatable; recorded under inductor_config. compile_regions' own per-region options (combo_kernels, "
                             "see --no-combo-kernels) take precedence over these")
    parser.add_argument("--no-combo-kernels", action="store_true",
                        help="with --compile: the regions (and the backbone-only step) compiled without Inductor's combo kernels, "
                             "as before session 17 (an A/B: gpu_session.sh ab --no-combo-kernels)")
    parser.add_argument("--gradient-sink", action="store_true",
                        help="the fused aggregation's backwards add the packed-feature gradient into one persistent buffer "
                             "(head.gradient_sink) instead of one buffer per decoder layer summed by autograd (an A/B: "
                             "gpu_session.sh ab --gradient-sink)")
    parser.add_argument("--losses-without-graphs", action="store_true",
                        help="with --compile: the decoder losses compiled without CUDA graphs (their kernels launched one by one)")
    parser.add_argument("--compile-backbone", action="store_true", help="torch.compile only the backbone+neck (in --compile-mode), also in the backbone-only step")
    parser.add_argument("--compile", action="store_true",
                        help="what train.compile does (sparse4d.engine.compile): image encoding, decoder layer, losses and matching costs as "
                             "regions; the events time only the phases (the parts: --profile --trace)")
    parser.add_argument("--head-as-one-graph", action="store_true",
                        help="with --compile: the whole head captured as one CUDA graph (torch.compile backend 'cudagraphs', eager kernels, no Inductor) "
                             "instead of compiled decoder modules")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"), default="default",
                        help="torch.compile mode for --compile / --compile-backbone (reduce-overhead: CUDA graphs per region)")
    parser.add_argument("--flops-tflop", type=float, default=0.0, help="FLOPs per step from an eager run (for MFU with --compile)")
    parser.add_argument("--skip-backbone-only", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 2 steps: GPU busy share, top ops")
    parser.add_argument("--trace", help="with --profile: write the profiled steps' Chrome trace here (.json.gz to compress)")
    parser.add_argument("--host-profile", help="cProfile 4 steady steps (host time by Python function); pstats written here")
    parser.add_argument("--gpu-idle", action="store_true",
                        help="8 more steps under a profiler of GPU activity only (no host ops: the steps keep their speed): "
                             "busy and idle GPU ms per step, idle split by gap size, the longest gaps (benchmarks/gpu_idle.py)")
    parser.add_argument("--host-timeline", action="store_true",
                        help="median host ms per phase over --steps more steps, the main thread's matching wait, and by how "
                             "much the GPU lagged the host at each phase mark (gpu_lag_ms_median: near 0 where the GPU waited for the host)")
    parser.add_argument("--json")
    real = parser.add_argument_group("--data real (the trainer's loader over generated scenes)")
    real.add_argument("--data", choices=("synthetic", "real"), default="synthetic",
                      help="synthetic: pinned random tensors (default); real: generated scenes through the trainer's dataloader")
    real.add_argument("--workdir", default="/tmp/sparse4d_train_throughput", help="where scenes are generated (reused when present)")
    real.add_argument("--scenes", type=int, default=16, help="train scenes to generate (one process per scene)")
    real.add_argument("--frames", type=int, default=24, help="frames per scene (one training sequence each)")
    real.add_argument("--workers", type=int, default=10, help="dataloader worker processes")
    real.add_argument("--loader-batches", type=int, default=40, help="batches of the loader-only rate measurement")
    real.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    real.add_argument("--smoke", action="store_true", help="tiny: 2 cameras, 256x128, the small config, a few steps (runs on CPU)")
    args = parser.parse_args()
    if "losses-graphs" in args.ab and (not args.compile or args.head_as_one_graph):
        parser.error("--ab losses-graphs needs --compile (the decoder losses as their own compiled region)")
    try:
        inductor_config = apply_inductor_config(args.inductor)
    except ValueError as error:
        parser.error(str(error))
    if args.data == "real":
        return real_main(args)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    fused = False if args.reference_aggregation else enable_fused_aggregation()
    if args.pixel_backward:
        fused_aggregation.PIXEL_BACKWARD = args.pixel_backward
    cfg = ModelConfig()
    model = Sparse4D.from_config(cfg, NUM_CLASSES, anchors=scene_anchors(cfg.head.instance_bank.num_anchor)).to(device).train()
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    encoder = model.head.anchor_encoder
    if {"anchor-encoder", "losses-graphs"} & set(args.ab):  # both variants must stay compiled side by side
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(32, getattr(torch._dynamo.config, limit)))
    train_cfg = TrainConfig()
    max_norm = float(train_cfg.optim.grad_clip.max_norm)
    graphed_step = None
    if args.graphed_optimizer:  # clip + AdamW replayed as one CUDA graph (tensor lr, capturable)
        optim = train_cfg.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(float(optim.lr), device=device),
                                      weight_decay=float(optim.weight_decay), fused=True, capturable=True)
        graphed_step = GraphedOptimizerStep(optimizer, max_norm)
    elif args.fused_adam:
        optim = train_cfg.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(optim.lr), weight_decay=float(optim.weight_decay), fused=True)
    else:
        optimizer = build_optimizer(model, train_cfg.optim)
    switches = Switches(model, optimizer_step=graphed_step, graphed_step=graphed_step)
    if "graphed-optimizer" in args.ab and graphed_step is None:  # a second optimizer over the same parameters
        optim = train_cfg.optim
        switches.graphed_step = GraphedOptimizerStep(torch.optim.AdamW(model.parameters(), lr=float(optim.lr), weight_decay=float(optim.weight_decay),
                                                                       fused=True, capturable=True), max_norm)
    if args.compile:
        from sparse4d.engine.compile import compile_regions, inductor_options

        mode = None if args.compile_mode == "default" else args.compile_mode
        if args.head_as_one_graph:  # the experiment: Inductor backbone, neck and losses; the head one eager-kernel graph
            for module in (model.backbone, model.neck):
                module.compile(mode=mode)
            model.decoder_losses = torch.compile(model.decoder_losses, mode=mode)
            model.head.compile(backend="cudagraphs")
            model.match_in_forward = False
        else:
            plain_losses = model.decoder_losses  # the method, before compile_regions wraps it
            compile_regions(model, mode, graphed_losses=not args.losses_without_graphs, combo_kernels=not args.no_combo_kernels)
            if "losses-graphs" in args.ab:  # the other variant, compiled side by side (dynamo keeps both)
                other = torch.compile(plain_losses, **inductor_options(mode if args.losses_without_graphs else None, not args.no_combo_kernels))
                switches.losses = {args.losses_without_graphs: other, not args.losses_without_graphs: model.decoder_losses}
    elif args.compile_backbone:  # in place, in --compile-mode (reduce-overhead: the backbone+neck step replays CUDA graphs too)
        mode = None if args.compile_mode == "default" else args.compile_mode
        model.backbone.compile(mode=mode)
        model.neck.compile(mode=mode)
    model.head.gradient_sink = args.gradient_sink
    if args.anchor_encoder is not None:  # after compile_regions, which stacks the branches
        encoder.stack_branches = args.anchor_encoder == "stacked"
    anchor_path = "stacked" if encoder.stack_branches else "branches"
    timeline = Timeline()
    if not (args.compile or args.compile_backbone):  # the timing hooks would be traced into the compiled regions
        instrument(model, timeline)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if not args.fp32 else contextlib.nullcontext
    host_batches = [synthetic_batch(args.batch, args.num_gt, step) for step in range(4)]

    marks: list[tuple[str, float]] | None = None  # host clock at phase ends (--host-timeline)
    gpu_marks: list[torch.cuda.Event] = []  # an event recorded at each of those marks

    def mark(name: str) -> None:
        if marks is not None:
            marks.append((name, time.perf_counter()))
            gpu_marks.append(torch.cuda.Event(enable_timing=True))
            gpu_marks[-1].record()

    def train_step(step: int) -> None:
        mark("start")
        if (args.compile or args.compile_backbone) and args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with timeline.region("data"):
            batch = to_device(host_batches[step % len(host_batches)], device)
            batch["first_frame"] = torch.full((args.batch,), step == 0, device=device)
            batch["timestamp"] = torch.full((args.batch,), step / 30.0, dtype=torch.float64, device=device)
        with autocast():
            with timeline.region("forward_total"):
                out = model(batch)
            mark("forward_queued")
            with timeline.region("loss"):
                losses = model.loss(out, batch)
            mark("loss_queued")
        with timeline.region("backward_total"):
            timeline.start("head_bwd")  # stopped when the gradients reach the neck outputs
            losses["loss"].backward()
        mark("backward_queued")
        with timeline.region("optimizer"):
            if switches.optimizer_step is not None:
                switches.optimizer_step.step()
            else:
                if max_norm > 0:  # the parameters as the trainer's configure_gradient_clipping takes them
                    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"] if p.grad is not None], max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        mark("optimizer_queued")
        if not args.auto_gc and step % 50 == 49:  # as the trainer (sparse4d/engine/scheduled_gc.py)
            gc.collect(1)

    for step in range(args.warmup):  # compiled runs compile here (minutes): report progress
        begin = time.perf_counter()
        train_step(step)
        torch.cuda.synchronize()
        print(f"warm-up step {step}: {time.perf_counter() - begin:.1f} s", file=sys.stderr, flush=True)
    if not args.auto_gc:  # the trainer pauses the automatic collector while it trains
        gc.collect()
        gc.disable()
    from sparse4d.engine.compile import eager_regions

    with torch.no_grad(), eager_regions():  # a probe of another shape must not recompile the regions
        feat_probe = model.extract_features(torch.zeros(1, CAMERAS, 3, HEIGHT, WIDTH, device=device))
    feats_channels_last = bool(feat_probe[0].stride(2) == 1)
    del feat_probe

    # Time split (events on) then clean wall-clock throughput (events off).
    torch.cuda.reset_peak_memory_stats()
    timeline.enabled = True
    splits: list[dict[str, float]] = []
    for step in range(args.warmup, args.warmup + max(3, args.steps // 4)):
        train_step(step)
        splits.append(timeline.collect())
    timeline.enabled = False

    def timed_block(first: int) -> float:
        """Wall-clock ms per step of steps first .. first + args.steps - 1."""
        torch.cuda.synchronize()
        begin = time.perf_counter()
        for step in range(first, first + args.steps):
            train_step(step)
        torch.cuda.synchronize()
        return (time.perf_counter() - begin) * 1000 / args.steps

    step_ms = timed_block(args.warmup + 100)
    print(f"timed: {step_ms:.2f} ms/step", file=sys.stderr, flush=True)
    save_json({"partial": True, "step_ms": round(step_ms, 2), "anchor_encoder": anchor_path}, args.json)
    ab_blocks = None
    for toggle in args.ab:  # same process: blocks with the setting flipped and as it was alternate
        get, set_, (on_name, off_name) = AB_TOGGLES[toggle]
        this = get(switches)
        label = {True: f"{on_name}_ms", False: f"{off_name}_ms"}
        blocks = {label[this]: [round(step_ms, 2)], label[not this]: []}
        for block in range(2):
            set_(switches, not this)
            for step in range(4000 + 200 * block, 4000 + 200 * block + args.warmup):  # a decoder variant compiles/records here
                train_step(step)
            blocks[label[not this]].append(round(timed_block(4100 + 200 * block), 2))
            set_(switches, this)
            blocks[label[this]].append(round(timed_block(4150 + 200 * block), 2))
            print(f"ab {toggle} block {block}: {json.dumps(blocks)}", file=sys.stderr, flush=True)
        ab_blocks = {**(ab_blocks or {}), toggle: blocks}
        # kept if the call's time limit ends the run before its full record (a fresh machine compiles for minutes)
        save_json({"partial": True, "step_ms": round(step_ms, 2), "anchor_encoder": anchor_path, "ab": ab_blocks}, args.json)
    peak_gb = torch.cuda.max_memory_allocated() / 1e9  # since the reset after warm-up: CUDA-graph pools allocated while warming up are not in it
    reserved_gb = torch.cuda.memory_reserved() / 1e9  # everything the caching allocator holds now, graph pools included

    # The host timeline runs before the profiler. Session 16 measured it after a profiled run and got
    # start -> forward queued 57.7 ms; py-spy, sampling a run with neither, saw about 28 ms. The
    # profiler's after-effects are the suspect (the clock's wrappers cost about a microsecond a call).
    gpu_idle = None
    if args.gpu_idle:  # before the full profiler too, for the same reason
        idle_steps = iter(range(3000, 3100))
        try:
            gpu_idle = gpu_only_profile(lambda: train_step(next(idle_steps)), 8)
        except ValueError as error:  # nothing recorded: keep the rest of the run's record
            gpu_idle = {"error": str(error)}
        print(f"gpu idle: {json.dumps(gpu_idle)}", file=sys.stderr, flush=True)
    host_timeline = None
    if args.host_timeline:
        marks, waits = [], []
        match_all_layers = model._match_all_layers

        def timed_match(*a, **k):  # the main thread's one wait per step: the last layers' Hungarian solves
            begin = time.perf_counter()
            try:
                return match_all_layers(*a, **k)
            finally:
                waits.append(time.perf_counter() - begin)

        model._match_all_layers = timed_match
        clock = HostClock()  # host time inside the regions' calls and the graph launches (no profiler)
        for owner, attr in compiled_regions(model):
            clock.wrap(owner, attr)
        clock.wrap(torch.cuda.CUDAGraph, "replay", "cuda_graph_replay")
        torch.cuda.synchronize()
        origin, origin_host = torch.cuda.Event(enable_timing=True), time.perf_counter()
        origin.record()  # the GPU is idle: it reaches this event as the host records it
        gpu_marks.clear()
        for step in range(2000, 2000 + args.steps):
            train_step(step)
            clock.end_step()
        torch.cuda.synchronize()
        gpu_ms = [origin.elapsed_time(event) for event in gpu_marks]
        marks.append(("start", time.perf_counter()))
        del model._match_all_layers
        clock.restore()
        host_timeline = phase_medians(marks, waits)
        host_timeline["gpu_lag_ms_median"] = gpu_lag_medians(marks[:-1], gpu_ms, origin_host)
        host_timeline["inside_calls_ms"] = clock.medians_ms()  # label@main (forward, loss) / @worker (autograd's backward thread)
        host_timeline["calls_per_step"] = clock.calls_per_step()
        marks = None
    # Profile before the FLOP counter and the sync check: under their dispatch modes the compiled
    # regions recompile, and past dynamo's recompile limit they stay eager.
    profile = None
    if args.profile:
        timeline.label_parts = True
        # the head-as-one-graph experiment traces the head's forward: a range inside it would break the graph
        with annotate([] if args.head_as_one_graph else region_parts(model)):
            profile = profile_steps(lambda: train_step(1002), 2, args.trace)
        timeline.label_parts = False
    host_profile = host_profile_steps(lambda: train_step(1003), 4, args.host_profile) if args.host_profile else None
    from torch.utils.flop_counter import FlopCounterMode
    if args.flops_tflop:  # compiled regions bypass the counter: reuse an eager run's count
        step_flops = args.flops_tflop * 1e12
    else:
        counter = FlopCounterMode(display=False)
        with counter:
            train_step(1000)
        step_flops = counter.get_total_flops()
    syncs = count_syncs(lambda: train_step(1001))

    median = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in set().union(*splits)}
    bb_fwd = median.get("backbone_fwd", 0.0) + median.get("neck_fwd", 0.0)
    bb_bwd = median.get("backward_total", 0.0) - median.get("head_bwd", 0.0)
    split = {
        "data": median.get("data", 0.0),
        "backbone_neck_fwd": bb_fwd,
        "backbone_neck_bwd": bb_bwd,
        "head_fwd_excl_aggregation": median.get("head_fwd", 0.0) - median.get("aggregation_fwd", 0.0),
        "head_bwd_excl_aggregation": median.get("head_bwd", 0.0) - median.get("aggregation_bwd", 0.0),
        "aggregation_fwd": median.get("aggregation_fwd", 0.0),
        "aggregation_bwd": median.get("aggregation_bwd", 0.0),
        "depth_fwd": median.get("depth_fwd", 0.0),
        "loss_incl_matching": median.get("loss", 0.0),
        "optimizer": median.get("optimizer", 0.0),
        "forward_total": median.get("forward_total", 0.0),
        "backward_total": median.get("backward_total", 0.0),
    }
    if args.compile or args.compile_backbone:  # no hooks inside compiled code: only the phases were timed
        split = {k: v for k, v in split.items() if k in ("data", "loss_incl_matching", "optimizer", "forward_total", "backward_total")}

    backbone_only_ms = None
    if not args.skip_backbone_only:
        parts = torch.nn.ModuleList([model.backbone, model.neck])
        bb_opt = torch.optim.AdamW(parts.parameters(), lr=1e-4, fused=True)
        img = torch.randn(args.batch, CAMERAS, 3, HEIGHT, WIDTH, device=device)
        extract = model.extract_features  # compiled in place with --compile-backbone
        if args.compile:  # the training step compiles backbone and neck inside `encode_images`: compile them the same way here
            from sparse4d.engine.compile import inductor_options

            extract = torch.compile(model.extract_features, **inductor_options(args.compile_mode, not args.no_combo_kernels))

        def backbone_step() -> None:
            if (args.compile or args.compile_backbone) and args.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                feats = extract(img)
                loss = sum(f.float().mean() for f in feats)
            loss.backward()
            bb_opt.step()
            bb_opt.zero_grad(set_to_none=True)
        for _ in range(args.warmup):
            backbone_step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            backbone_step()
        torch.cuda.synchronize()
        backbone_only_ms = (time.perf_counter() - start) * 1000 / args.steps

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    record = {
        "gpu": name, "torch": torch.__version__, "batch": args.batch, "cameras": CAMERAS, "input": f"{WIDTH}x{HEIGHT}",
        "precision": "fp32" if args.fp32 else "bf16-autocast", "channels_last": not args.no_channels_last,
        "features_channels_last": feats_channels_last, "aggregation": "fused-triton" if fused else "grid_sample",
        "pixel_backward": fused_aggregation.PIXEL_BACKWARD, "fused_adam": args.fused_adam, "compile_backbone": args.compile_backbone or args.compile, "compile": args.compile, "head_as_one_graph": args.head_as_one_graph, "graphed_optimizer": args.graphed_optimizer, "losses_without_graphs": args.losses_without_graphs, "auto_gc": args.auto_gc, "anchor_encoder": anchor_path, "compile_mode": args.compile_mode, "num_gt": args.num_gt,
        "inductor_config": inductor_config, "combo_kernels": args.compile and not args.no_combo_kernels, "gradient_sink": args.gradient_sink, "step_ms": round(step_ms, 2), "samples_per_s": round(args.batch * 1000 / step_ms, 2),
        "images_per_s": round(args.batch * CAMERAS * 1000 / step_ms, 1),
        "step_tflop": round(step_flops / 1e12, 3),
        "mfu": round(step_flops / (step_ms / 1000) / peak, 4) if peak else None, "peak_flops_assumed": peak,
        "peak_memory_gb": round(peak_gb, 2), "memory_reserved_gb": round(reserved_gb, 2),
        "backbone_neck_only_step_ms": round(backbone_only_ms, 2) if backbone_only_ms else None,
        "ratio_to_backbone_only": round(step_ms / backbone_only_ms, 2) if backbone_only_ms else None,
        "split_ms_median_with_events": {k: round(v, 2) for k, v in split.items()},
        "host_syncs_per_step": sum(syncs.values()), "host_sync_sites": dict(syncs.most_common(12)),
    }
    if profile:
        record["profile"] = profile
    if host_profile:
        record["host_profile"] = host_profile
    if host_timeline:
        record["host_timeline_ms_median"] = host_timeline
    if gpu_idle:
        record["gpu_idle"] = gpu_idle
    if ab_blocks:
        record["ab"] = ab_blocks
    emit(record, args.json)
    print(f"\n{name}: {record['samples_per_s']} samples/s ({record['step_ms']} ms/step, batch {args.batch}), "
          f"MFU {record['mfu']}, peak {record['peak_memory_gb']} GB, backbone+neck-only {record['backbone_neck_only_step_ms']} ms "
          f"-> ratio {record['ratio_to_backbone_only']}, aggregation {record['aggregation']}")
    return 0


# ---------------------------------------------------------------------------------------- --data real
def real_data_steps(spec, *, steps: int, warmup: int, device: torch.device, bf16: bool = True,
                    compile: bool = False) -> dict:
    """Time the trainer's training step over the trainer's streaming loader (spec: a validated train spec).

    The loop is Lightning's automatic optimisation without Lightning: training_step under autocast,
    backward, the module's gradient clipping, optimizer and scheduler step. `data_wait` is the host
    time blocked in next(loader); the first `warmup` steps (cuDNN autotuning, worker start) are not timed.
    """
    from sparse4d.engine.data_module import Sparse4DDataModule
    from sparse4d.engine.lightning_module import Sparse4DLightning
    from sparse4d.engine.train import build_model

    torch.backends.cudnn.benchmark = bool(spec.train.cudnn.benchmark)
    started = time.perf_counter()
    data = Sparse4DDataModule(spec.dataset, spec.model, seed=0, with_val=False)
    data.setup("fit")
    steps_per_epoch = len(data.train_sampler())
    model = build_model(spec).to(device).train()
    if compile:
        from sparse4d.engine.compile import compile_regions

        compile_regions(model)
    module = Sparse4DLightning(model, spec.train.optim, total_steps=warmup + steps)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 and device.type == "cuda" else contextlib.nullcontext
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.reset_temporal_state()
    batches = iter(data.train_dataloader())
    waits: list[float] = []
    samples = 0
    timed_from = 0.0
    first_step_s = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed_from = time.perf_counter()
        before = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:  # the epoch ended: a new epoch, as the trainer would start
            model.reset_temporal_state()
            batches = iter(data.train_dataloader())
            batch = next(batches)
        waited = time.perf_counter() - before
        batch = data.transfer_batch_to_device(batch, device, 0)  # the trainer's move: the GT stays on the host
        with autocast():
            loss = module.training_step(batch, step)
        loss.backward()
        module.configure_gradient_clipping(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step == 0:
            first_step_s = time.perf_counter() - started
        if step >= warmup:
            waits.append(waited)
            samples += int(batch["img"].shape[0])
    module.check_finite()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - timed_from
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    boxes = [int(b.shape[0]) for b in batch["gt_bboxes_3d"]]
    del batches, module, model, optimizer, scheduler
    step_s = elapsed / max(steps, 1)
    wait_ms = np.array(waits) * 1000
    return {
        "steps": steps, "warmup": warmup, "steps_per_epoch": steps_per_epoch, "startup_s": round(first_step_s, 2),
        "step_ms": round(step_s * 1000, 2), "steps_per_s": round(1 / step_s, 4), "samples_per_s": round(samples / elapsed, 3),
        "data_wait_ms_median": round(float(np.median(wait_ms)), 2), "data_wait_ms_mean": round(float(wait_ms.mean()), 2),
        "data_wait_ms_p90": round(float(np.percentile(wait_ms, 90)), 2),
        "data_wait_share": round(float(wait_ms.sum() / 1000 / elapsed), 4),
        "peak_memory_gb": round(peak_gb, 2) if peak_gb is not None else None, "gt_boxes_last_batch": boxes,
    }


def loader_only_rate(spec, batches: int) -> dict:
    """Samples/s of the trainer's train loader alone; the first 2 x workers batches (filled while the
    workers start) are not timed."""
    from sparse4d.engine.data_module import Sparse4DDataModule

    data = Sparse4DDataModule(spec.dataset, spec.model, seed=0, with_val=False)
    data.setup("fit")
    loader = data.train_dataloader()
    skip = 2 * max(int(spec.dataset.num_workers), 1)
    batches = max(batches, skip + 5)
    seen, samples, started = 0, 0, 0.0
    while seen < batches:
        for batch in loader:
            seen += 1
            if seen == skip:
                started = time.perf_counter()
            elif seen > skip:
                samples += int(batch["img"].shape[0])
            if seen >= batches:
                break
    elapsed = time.perf_counter() - started
    return {"loader_batches_timed": seen - skip, "loader_only_samples_per_s": round(samples / elapsed, 3)}


def keeps_up(step: dict, loader: dict) -> dict:
    """The loader keeps up when steps barely wait on it and it alone is clearly faster than training."""
    wait_ok = step["data_wait_ms_median"] <= 0.05 * step["step_ms"] and step["data_wait_share"] <= 0.05
    rate_ok = loader["loader_only_samples_per_s"] >= 1.1 * step["samples_per_s"]
    return {"loader_keeps_up": bool(wait_ok and rate_ok), "wait_ok": bool(wait_ok), "loader_rate_ok": bool(rate_ok),
            "loader_headroom": round(loader["loader_only_samples_per_s"] / max(step["samples_per_s"], 1e-9), 2)}


def real_main(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from accuracy_synthetic import spec_for
    from synthetic_scenes import SceneSet, batch_bytes, read_manifest, shared_memory_workers, spec_paths, streaming_overrides

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    if args.smoke:
        scenes = SceneSet(train_scenes=2, val_scenes=1, train_frames=8, val_frames=4, cameras=2, width=256, height=128, num_anchor=48)
        steps, warmup, workers = min(args.steps, 4), min(args.warmup, 2), min(args.workers, 1)
    else:
        # one short val scene only because the converter layout wants a val split; it is not read here
        scenes = SceneSet(train_scenes=args.scenes, val_scenes=1, train_frames=args.frames, val_frames=4, cameras=CAMERAS,
                          width=WIDTH, height=HEIGHT, num_anchor=900)
        steps, warmup, workers = args.steps, args.warmup, args.workers
    workdir = Path(args.workdir)
    started = time.perf_counter()
    if read_manifest(workdir) is None or read_manifest(workdir).get("scenes") != dataclasses.asdict(scenes):
        # A fresh process: its spawn pool then imports only synthetic_scenes, not this torch-heavy script.
        here = Path(__file__).resolve().parent
        command = [sys.executable, str(here / "synthetic_scenes.py"), "--workdir", str(workdir), "--train-scenes", str(scenes.train_scenes),
                   "--val-scenes", str(scenes.val_scenes), "--train-frames", str(scenes.train_frames), "--val-frames", str(scenes.val_frames),
                   "--cameras", str(scenes.cameras), "--size", f"{scenes.width}x{scenes.height}", "--num-anchor", str(scenes.num_anchor),
                   "--seed", str(scenes.seed)]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(here.parent)})
    manifest = read_manifest(workdir)
    data_s = time.perf_counter() - started
    workers, shm_warning = shared_memory_workers(workers, batch_bytes(scenes, args.batch))
    if shm_warning:
        print(f"warning: {shm_warning}", file=sys.stderr)
    overrides = streaming_overrides(scenes, args.batch, workers)
    if args.smoke:
        from sparse4d.engine.small_config import small_overrides

        overrides = {**small_overrides(width=scenes.width, height=scenes.height, cameras=scenes.cameras, num_anchor=scenes.num_anchor), **overrides}
    overrides.update({"train.precision": "fp32" if args.fp32 or device.type == "cpu" else "bf16",
                      "train.cudnn.benchmark": True, "train.cudnn.deterministic": False})
    spec = spec_for("train", spec_paths(manifest), workdir / "throughput_spec", overrides)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    step = real_data_steps(spec, steps=steps, warmup=warmup, device=device, bf16=not args.fp32, compile=args.compile)
    loader = loader_only_rate(spec, args.loader_batches if not args.smoke else 6)
    verdict = keeps_up(step, loader)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    record = {
        "data": "real", "device": name, "torch": torch.__version__, "batch": args.batch, "cameras": scenes.cameras,
        "input": f"{scenes.width}x{scenes.height}", "model": "small config" if args.smoke else "default config (ResNet-101, 900 anchors)",
        "precision": spec.train.precision, "workers": workers, "compile": args.compile,
        "train_frames": manifest["frames"]["train"], "data_prep_s": round(data_s, 1), "data_timings_s": manifest["timings_s"],
        **step, **loader, **verdict,
    }
    emit(record, args.json)
    print(f"\n{name}: real data, batch {args.batch}, {workers} workers: {record['samples_per_s']} samples/s "
          f"({record['step_ms']} ms/step), data wait median {record['data_wait_ms_median']} ms "
          f"({100 * record['data_wait_share']:.1f}% of the time), loader alone {record['loader_only_samples_per_s']} samples/s "
          f"-> {'keeps up' if verdict['loader_keeps_up'] else 'does NOT keep up'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
