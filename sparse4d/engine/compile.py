"""Regional torch.compile of the sparse head and its losses.

An eager training step of the default config launches thousands of small kernels in the decoder
layers and the per-layer losses; the host spends longer issuing them than the GPU spends running them.
Compiling those regions (each decoder module, the anchor encoder, the two loss functions) fuses the
small elementwise chains into a few kernels each. The backbone and neck stay eager: cuDNN convolutions
gain nothing from it. Modules are compiled in place (`nn.Module.compile`), so state-dict keys and
checkpoints do not change; the Hungarian solve and the Triton aggregation run between regions.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

LOG = logging.getLogger(__name__)


def compile_regions(model: nn.Module, mode: str | None = None) -> int:
    """Compile the head's decoder modules, anchor encoder and loss functions of a `Sparse4D`; returns
    how many regions were wrapped. Shapes are static per config (denoising pads to a fixed query count
    only when every sample has max_dn_gt boxes, so a few shape variants may compile). `mode` is
    torch.compile's (None: default; "reduce-overhead" also replays each region from CUDA graphs)."""
    regions = 0
    for layer in model.head.layers:
        if isinstance(layer, nn.Identity):
            continue
        layer.compile(mode=mode)
        regions += 1
    model.head.anchor_encoder.compile(mode=mode)
    model.query_losses = torch.compile(model.query_losses, mode=mode)
    model.denoising_losses = torch.compile(model.denoising_losses, mode=mode)
    LOG.info("compiled %d head regions and the loss functions", regions + 1)
    return regions + 3


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
    return mode == "reduce-overhead"


def eager_regions():
    """Context in which compiled regions run their eager code: evaluation captures whole frames in its
    own CUDA graph (`GraphedStream`), inside which compiled regions and their graphs cannot run."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        import contextlib

        return contextlib.nullcontext()
    return set_stance("force_eager")
