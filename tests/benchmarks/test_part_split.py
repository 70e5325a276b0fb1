"""benchmarks/part_split.py charges each GPU kernel to the model part whose host call launched it, and
a backward kernel to the part of the forward op its autograd node came from."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from part_split import HostScopes, annotate, gpu_ms_by_part, part  # noqa: E402


def _gpu_trace() -> dict:
    """Main thread 1: data copy; a 'head' range with a compiled layer (seq 5) replaying a graph; the
    optimizer's own range. Thread 3: a pin-memory op. Autograd thread 2: the layer's backward node (seq 5) replaying its graph,
    and an AccumulateGrad node without a sequence number. Durations in us, 2 steps."""
    host = [
        (1, "user_annotation", "part:data", 0, 100, {}),
        (1, "cuda_runtime", "cudaMemcpyAsync", 10, 5, {"correlation": 1}),
        (1, "user_annotation", "part:head", 200, 500, {}),
        (1, "cpu_op", "CompiledFunction", 250, 300, {"Sequence number": 5, "Fwd thread id": 0}),
        (1, "cuda_runtime", "cudaGraphLaunch", 260, 30, {"correlation": 2}),
        (1, "cpu_op", "aten::mul", 600, 10, {"Sequence number": 6, "Fwd thread id": 0}),
        # another thread's numbers count on their own: its later op with number 5 is not the layer's
        (3, "cpu_op", "aten::pin_memory", 800, 10, {"Sequence number": 5, "Fwd thread id": 0}),
        (1, "user_annotation", "Optimizer.step#AdamW.step", 2000, 100, {}),
        (1, "cuda_runtime", "cudaLaunchKernel", 2010, 5, {"correlation": 5}),
        (2, "cpu_op", "autograd::engine::evaluate_function: CompiledFunctionBackward", 1000, 400, {"Sequence number": 5, "Fwd thread id": 1}),
        (2, "cpu_op", "CompiledFunctionBackward", 1010, 380, {"Sequence number": 5, "Fwd thread id": 1}),
        (2, "cuda_runtime", "cudaGraphLaunch", 1020, 30, {"correlation": 3}),
        (2, "cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 1500, 50, {}),
        (2, "cuda_runtime", "cudaLaunchKernel", 1510, 5, {"correlation": 4}),
    ]
    gpu = [
        ("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 20, 400, 1),
        ("kernel", "triton_poi_fused_add_0", 300, 1000, 2),
        ("kernel", "_forward_kernel", 1300, 600, 2),
        ("kernel", "_query_backward_kernel", 1900, 2000, 3),
        ("kernel", "triton_poi_fused_mul_1", 3900, 800, 3),
        ("kernel", "vectorized_elementwise_kernel<add>", 4700, 200, 4),
        ("kernel", "multi_tensor_apply_kernel<FusedAdamW>", 5000, 300, 5),
        ("kernel", "orphan", 6000, 100, 99),
    ]
    return {"traceEvents": [
        *({"pid": 0, "tid": tid, "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args} for tid, cat, name, ts, dur, args in host),
        *({"pid": 0, "tid": 7, "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": c}} for cat, name, ts, dur, c in gpu),
    ]}


def test_kernels_are_charged_to_their_part_and_direction_per_step() -> None:
    split = gpu_ms_by_part(_gpu_trace(), steps=2)
    assert split == {
        "aggregation_bwd": 1.0, "head_fwd": 0.5, "head_bwd": 0.4, "aggregation_fwd": 0.3, "data": 0.2, "optimizer": 0.15,
        "unlinked_bwd": 0.1, "unlinked": 0.05, "total": 2.7,
    }
    assert list(split)[:2] == ["aggregation_bwd", "head_fwd"]  # largest first


def test_the_script_reads_a_gzipped_trace_and_refuses_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(_gpu_trace(), fh)
    script = str(ROOT / "benchmarks" / "part_split.py")
    run = subprocess.run([sys.executable, script, str(path), "--steps", "1"], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)["total"] == 5.4
    bad = subprocess.run([sys.executable, script, str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read trace" in bad.stderr


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer_weights = torch.nn.Linear(8, 8)

    def layer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer_weights(x)) * 2


def test_a_real_trace_links_backward_ops_to_the_annotated_forward(tmp_path: Path) -> None:
    """torch's own trace format on the CPU: a compiled region wrapped by `annotate`, an eager loss in a
    `part` range; each backward op must resolve to the part of its forward op."""
    model = Model()
    model.layer = torch.compile(model.layer, backend="aot_eager")  # as compile_regions sets regions
    x = torch.randn(4, 8, requires_grad=True)
    model.layer(x).sum().backward()  # compile outside the profile
    compiled = model.layer
    with annotate([(model, "layer", "head")]):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = model.layer(x)
            with part("loss"):
                loss = (y[:, :4] ** 2).sum()
            loss.backward()
    assert model.layer is compiled  # restored
    path = tmp_path / "cpu_trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    scopes = HostScopes(events)

    def parts_of(op: str) -> set[tuple[str, str]]:
        return {scopes.part_of(e) for e in events if e.get("cat") == "cpu_op" and e["name"] == op}

    assert parts_of("aten::tanh") == {("head", "fwd")}  # inside the compiled region's forward
    assert parts_of("aten::pow") == {("loss", "fwd"), ("loss", "bwd")}  # the loss, and PowBackward's own pow
    assert parts_of("CompiledFunctionBackward") == {("head", "bwd")}
    assert ("head", "bwd") in parts_of("aten::mm")  # the region's weight gradient


def test_train_throughputs_part_labels_cover_the_compiled_model(tmp_path: Path) -> None:
    """The region names `train_throughput.py --profile` wraps exist on the model, and in a profiled
    step of the compiled small model (aot_eager: Inductor's forward/backward split) every op run by
    a region's forward or backward resolves to that region's part."""
    import numpy as np
    import torch._dynamo as dynamo

    from sparse4d.engine.compile import compile_regions
    from sparse4d.model.sparse4d import Sparse4D
    from tests.model.model_helpers import random_anchors, small_config, synthetic_batch
    from train_throughput import region_parts

    torch.manual_seed(0)
    np.save(tmp_path / "anchor_init.npy", random_anchors(80))
    model = Sparse4D.from_config(small_config(str(tmp_path / "anchor_init.npy")), num_classes=3).train()
    dynamo.reset()
    compile_regions(model, backend="aot_eager")
    batches = [synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame) for frame in range(3)]

    def step(batch: dict) -> None:
        with part("head"):
            out = model(batch)
        with part("loss"):
            losses = model.loss(out, batch)
        losses["loss"].backward()
        model.zero_grad(set_to_none=True)

    step(batches[0])
    step(batches[1])  # the temporal regions compile here
    with annotate(region_parts(model)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(batches[2])
    assert "decoder_layer" in vars(model.head) and "encode_images" in vars(model)  # the compiled regions are back
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    scopes = HostScopes(events)
    region_ops = [e for e in events if e.get("cat") == "cpu_op" and e["name"].startswith("aten::")
                  and any(n["name"] in ("CompiledFunction", "CompiledFunctionBackward") for n in scopes.chain(e))]
    found = {scopes.part_of(e) for e in region_ops}
    assert found == {(p, d) for p in ("backbone_neck", "head", "loss") for d in ("fwd", "bwd")}
    dynamo.reset()


def test_only_compiled_regions_are_wrapped_and_gpu_ranges_are_not_kernels(tmp_path: Path) -> None:
    """train_throughput's host clock wraps the compiled regions only: `prepare_levels` is an instance
    attribute too, but runs inside `encode_images`, where a wrapper would break the compiled graph
    (the session-13 H100 run: encode_images recompiled, ~485 ms a step). The profile's kernel sums
    leave out the part ranges the GPU timeline mirrors."""
    import numpy as np
    import torch._dynamo as dynamo

    from sparse4d.engine.compile import compile_regions
    from sparse4d.model.sparse4d import Sparse4D
    from tests.model.model_helpers import random_anchors, small_config
    from train_throughput import compiled_regions, is_gpu_range

    np.save(tmp_path / "anchor_init.npy", random_anchors(80))
    model = Sparse4D.from_config(small_config(str(tmp_path / "anchor_init.npy")), num_classes=3)
    assert "prepare_levels" in vars(model.head) and compiled_regions(model) == []
    compile_regions(model, backend="eager")
    assert [attr for _, attr in compiled_regions(model)] == ["encode_images", "decoder_layer", "decoder_losses", "matching_costs"]
    assert is_gpu_range("part:head") and is_gpu_range("Optimizer.step#AdamW.step")
    assert not is_gpu_range("_query_backward_kernel") and not is_gpu_range("Memcpy HtoD (Pinned -> Device)")
    dynamo.reset()
