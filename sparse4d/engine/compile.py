"""Regional torch.compile of the training step: backbone, neck, each decoder module, the losses.

An eager training step of the default config launches thousands of small kernels in the decoder
layers and the per-layer losses; the host spends longer issuing them than the GPU spends running them.
Compiled regions fuse the elementwise chains, and with `reduce-overhead` each region replays as a CUDA
graph. Regions are the repeated modules (every deformable, FFN, attention, norm and refinement module;
the per-layer loss functions), because compiled code is reused across instances of one module type:
compiling the whole head as one graph was measured at over 6 minutes of compilation per variant on
an H100 host (first frame, frames with carried groups), the regions at a fraction of that. The fused
aggregation is a custom op, so a deformable module compiles through it without a graph break. The
backbone and neck are compiled too (Inductor folds BatchNorm and ReLU into few kernels). Modules are
compiled in place (`nn.Module.compile`), so state-dict keys and checkpoints do not change.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

LOG = logging.getLogger(__name__)


def compile_regions(model: nn.Module, mode: str | None = None, backbone: bool = True) -> int:
    """Compile a `Sparse4D`'s backbone and neck (unless `backbone` is False), decoder modules, anchor
    encoder and loss functions; returns how many regions were wrapped. Shapes are static per config
    (denoising pads to a fixed query count only when every sample has max_dn_gt boxes, so a few shape
    variants may compile). `mode` is torch.compile's (None: default; "reduce-overhead" also replays each
    region from CUDA graphs)."""
    regions = 0
    image_part = (model.backbone, model.neck) if backbone else ()
    for module in (*image_part, model.head.anchor_encoder, *model.head.layers):
        if isinstance(module, nn.Identity):
            continue
        module.compile(mode=mode)
        regions += 1
    model.query_losses = torch.compile(model.query_losses, mode=mode)
    model.denoising_losses = torch.compile(model.denoising_losses, mode=mode)
    LOG.info("compiled %d regions (mode %s)", regions + 2, mode or "default")
    return regions + 2


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
