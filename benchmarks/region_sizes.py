"""How many tensors each compiled decoder-layer graph takes and returns (CPU, no GPU needed).

Under `reduce-overhead` every region call is a CUDA-graph replay whose host cost grows with the
tensors that cross it: AOTAutograd's wrappers and the CUDA-graph tree's bookkeeping touch each input
and output, and a forward returns, besides its results, every tensor its backward saved. This
compiles the default head's decoder layer with AOTAutograd, Inductor's min-cut partitioner and
counting compilers (the graphs Inductor would receive), runs three streamed frames of train_throughput's step on the CPU, and prints, per graph
variant, (inputs, outputs, ops) of the forward and of the backward, for each anchor-encoder path.

    PYTHONPATH=. python benchmarks/region_sizes.py                 # about 2 minutes on 2 cores
    PYTHONPATH=. python benchmarks/region_sizes.py --num-anchor 900 --json sizes.json

Smaller images, backbone and anchor count only make it faster: the decoder layer's graphs do not
depend on them (the query count changes tensor sizes, not how many tensors cross the region).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
from torch._dynamo.backends.common import aot_autograd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eager_ops import cpu_training_step  # noqa: E402


def graph_size(gm: torch.fx.GraphModule, inputs: list) -> tuple[int, int, int]:
    """(inputs, outputs, ops) of one AOTAutograd graph."""
    output = next(node for node in gm.graph.nodes if node.op == "output")
    ops = sum(1 for node in gm.graph.nodes if node.op == "call_function")
    return len(inputs), len(output.args[0]), ops


def decoder_layer_sizes(stack_branches: bool, num_anchor: int, frames: int = 3) -> dict[str, list[list[int]]]:
    """Distinct (inputs, outputs, ops) of the decoder layer's forward and backward graphs."""
    seen: dict[str, set[tuple[int, int, int]]] = {"forward": set(), "backward": set()}

    def compiler(kind: str):
        def record(gm: torch.fx.GraphModule, inputs: list):
            seen[kind].add(graph_size(gm, inputs))
            return make_boxed_func(gm.forward)
        return record

    backend = aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"),
                           partition_fn=min_cut_rematerialization_partition)  # Inductor's choice of saved tensors
    torch._dynamo.reset()
    step, model = cpu_training_step(backbone="resnet_18", width=176, height=64, num_anchor=num_anchor, compiled=False, with_model=True)
    head = model.head
    head.decoder_layer = torch.compile(head.decoder_layer, backend=backend)
    head.anchor_encoder.stack_branches = stack_branches
    for frame in range(frames):
        step(frame)
    return {kind: [list(size) for size in sorted(sizes)] for kind, sizes in seen.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-anchor", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    record = {
        "what": "decoder layer graphs: [inputs, outputs, ops] of each compiled variant (layer kinds), smallest first",
        "torch": torch.__version__,
        "num_anchor": args.num_anchor,
        "stacked": decoder_layer_sizes(True, args.num_anchor),
        "branches": decoder_layer_sizes(False, args.num_anchor),
    }
    text = json.dumps(record, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
