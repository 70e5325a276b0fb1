"""The anchor encoder's two training paths under torch.compile: kernels generated, and time per call.

`branches`: the four MLPs (position, size, yaw, velocity) one after another, 4 loops of
Linear-ReLU-LayerNorm each. `stacked`: the same MLPs side by side (sparse4d/model/grouped_branches.py),
which `compile_regions` turns on. One call = the forward and backward of one decoder layer's
embedding of 2 x 2180 anchors (batch 2, 900 anchors + denoising) with the default widths.

    PYTHONPATH=. python benchmarks/anchor_encoder_kernels.py            # CUDA when present, else CPU
    PYTHONPATH=. python benchmarks/anchor_encoder_kernels.py --device cpu --rows 500

Prints one JSON record: per path, Inductor's generated-kernel count for forward + backward and the
median ms per call (CUDA events on a GPU, wall clock on the CPU); on a GPU also with the compiled
functions replayed from CUDA graphs (`*_cuda_graphs`), where the time is the kernels' own.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch._inductor import metrics

from aggregation_kernel import cuda_time_ms  # benchmarks/, next to this script
from sparse4d.model.anchor_encoder import AnchorEncoder


def measure(encoder: AnchorEncoder, anchors: torch.Tensor, stack: bool, repeats: int, bf16: bool, mode: str | None = None) -> dict:
    encoder.stack_branches = stack
    torch._dynamo.reset()
    metrics.reset()
    params = encoder.flat_parameters().detach().requires_grad_()
    embed = torch.compile(lambda a, p: encoder(a, p), mode=mode)
    grad = torch.randn(*anchors.shape[:-1], 256, device=anchors.device)

    def call() -> None:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(anchors.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = embed(anchors, params)
        out.backward(grad.to(out.dtype))
        params.grad = None

    call()  # compiles forward and backward
    kernels = metrics.generated_kernel_count
    if anchors.is_cuda:
        ms = cuda_time_ms(call, warmup=3, reps=repeats)
    else:
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            call()
            times.append((time.perf_counter() - begin) * 1000)
        ms = statistics.median(times)
    return {"generated_kernels_fwd_bwd": kernels, "ms_per_call_median": round(ms, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--rows", type=int, default=2180, help="anchors per sample (900 + denoising at the default config)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(0)
    encoder = AnchorEncoder([128, 32, 32, 64], out_loops=4).to(device)
    anchors = torch.randn(args.batch, args.rows, 11, device=device)
    bf16 = device.type == "cuda"
    record = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": args.batch * args.rows,
        "precision": "bf16-autocast" if bf16 else "fp32",
        "branches": measure(encoder, anchors, False, args.repeats, bf16),
        "stacked": measure(encoder, anchors, True, args.repeats, bf16),
    }
    if device.type == "cuda":  # replayed from CUDA graphs as in the training step: launches no longer count
        record["branches_cuda_graphs"] = measure(encoder, anchors, False, args.repeats, bf16, "reduce-overhead")
        record["stacked_cuda_graphs"] = measure(encoder, anchors, True, args.repeats, bf16, "reduce-overhead")
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
