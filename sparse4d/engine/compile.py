"""Regional torch.compile of the training step: the image encoding, one region per decoder layer, the
losses, the matching costs.

An eager training step of the default config launches thousands of small kernels in the decoder
layers and the per-layer losses; the host spends longer issuing them than the GPU spends running them.
Compiled regions fuse the elementwise chains, and with `reduce-overhead` each region replays as a CUDA
graph. A region is everything that reads the images (`Sparse4D.encode_images`: backbone, neck, the
packed feature levels, the dense-depth loss); one decoder layer (`head.decoder_layer`: anchor
embedding, attention, aggregation, FFN, norms, refinement), reused by all six layers since compiled
code is shared across calls of one function; all layers' losses together (`decoder_losses`); and
each layer's Hungarian costs (`matching_costs`, one fused kernel instead of ~20 per layer).
Compiling the whole head as one graph was measured at over 6 minutes of compilation per variant on an
H100 host; one region per module (about 50 a step) compiled fast but each CUDA-graph replay costs the
host about 0.5 ms of checks and copies, twice per step (forward, backward): on an H200 that overhead
alone was about 55 ms of a 156 ms step. The fused aggregation is a custom op, so a decoder layer
compiles through it without a graph break. Regions are compiled through the functions that call the
modules, so state-dict keys and checkpoints do not change.

Inductor's `combo_kernels` is on for every region: it launches independent small kernels of a region
side by side as one (a step launched about 5,250 kernels without it, 630 of them one-tensor dtype
casts of bf16 autocast). On an H200 it took the default step from 97.85 to 94.20 ms (the backward's
GPU time from 64.2 to 62.0 ms). It costs compilation time once per run: the first two steps on a
fresh H100 took 443 s with it; a fresh H200 took 301 s without it (benchmarks/README, session 17).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

LOG = logging.getLogger(__name__)


def inductor_options(mode: str | None, combo_kernels: bool = True) -> dict[str, Any]:
    """torch.compile keyword arguments for Inductor in `mode` (None or "default", "reduce-overhead",
    ...), with `combo_kernels` set. torch.compile takes a mode or an options dict, not both, so the
    mode's own options are spelled out (`list_mode_options`). A torch whose Inductor lacks
    `combo_kernels` compiles in the plain mode."""
    import torch._inductor
    import torch._inductor.config

    named = mode if mode != "default" else None  # list_mode_options(None) lists every mode
    if not combo_kernels or not hasattr(torch._inductor.config, "combo_kernels"):
        return {"mode": named} if named else {}
    options: dict[str, Any] = dict(torch._inductor.list_mode_options(named)) if named else {}
    return {"options": {**options, "combo_kernels": True}}


def compile_regions(model: nn.Module, mode: str | None = None, backbone: bool = True, backend: str = "inductor",
                    graphed_losses: bool = True, combo_kernels: bool = True) -> int:
    """Compile a `Sparse4D`'s image encoding (`encode_images`: backbone, neck, feature packing, depth
    loss; only the packing when `backbone` is False), its decoder layer, the decoder losses and the
    matching costs; returns how many functions were wrapped. Shapes
    are static per config (denoising pads to a fixed query count only when every sample has max_dn_gt
    boxes, so a few shape variants may compile). `mode` is torch.compile's (None: default;
    "reduce-overhead" also replays each region from CUDA graphs); `backend` another torch.compile
    backend (benchmarks/eager_ops.py uses "aot_eager" to see which work stays outside the regions).
    `graphed_losses=False` compiles the losses without CUDA graphs (an A/B of
    benchmarks/train_throughput.py: their kernels' launches against two graph replays' host checks);
    `combo_kernels=False` compiles without Inductor's combo kernels (see the module docstring)."""
    inductor = backend == "inductor"
    no_graphs = inductor_options(None, combo_kernels) if inductor else {"backend": backend}
    options = inductor_options(mode, combo_kernels) if inductor else no_graphs
    head = model.head
    if backbone:  # backbone, neck, packing and the depth loss: one region
        model.encode_images = torch.compile(model.encode_images, **options)
    else:
        head.prepare_levels = torch.compile(head.prepare_levels, **options)
    head.decoder_layer = torch.compile(head.decoder_layer, **options)
    head.anchor_encoder.stack_branches = True  # 4 fused GEMM + norm loops instead of 16 (pays only compiled)
    model.decoder_losses = torch.compile(model.decoder_losses, **(options if graphed_losses else no_graphs))
    # no CUDA graph for the matching costs: its output goes straight to the host, and one fused kernel
    # launch costs the host less than a graph replay's checks and copies
    model.matching_costs = torch.compile(model.matching_costs, **no_graphs)
    LOG.info("compiled 4 regions (mode %s, backend %s)", mode or "default", backend)
    return 4


def compile_for_training(model: nn.Module, mode: str, on_gpu: bool) -> bool:
    """`train.compile`: compile the regions when training on a GPU; returns whether each training step
    must mark a new CUDA-graph step (`reduce-overhead`). On the CPU it logs and trains eagerly."""
    if mode == "off":
        return False
    if not on_gpu:
        LOG.warning("train.compile=%s needs a CUDA GPU: training eagerly on the CPU", mode)
        return False
    if not hasattr(torch.compiler, "set_stance"):
        from sparse4d.errors import SpecError

        raise SpecError(f"train.compile={mode} needs torch >= 2.6 (this is {torch.__version__})", key="train.compile",
                        hint="upgrade torch or set train.compile=off")
    compile_regions(model, None if mode == "default" else mode)
    LOG.info("train.compile=%s: the first two training steps compile the regions (several minutes; 7.4 on a fresh H100), "
             "later steps reuse them", mode)
    return mode == "reduce-overhead"


def eager_regions():
    """Context in which compiled regions run their eager code: evaluation captures whole frames in its
    own CUDA graph (`GraphedStream`), inside which compiled regions and their graphs cannot run."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        import contextlib

        return contextlib.nullcontext()
    return set_stance("force_eager")
