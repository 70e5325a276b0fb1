"""The sparse head's training forward and backward replayed from CUDA graphs.

An eager default-config step launches about ten thousand small kernels, most of them in the six
decoder layers and their backward; the host takes longer to issue them than the GPU takes to run
them. `torch.cuda.make_graphed_callables` captures the head's forward and backward once per input
layout and replays each as one launch. Everything around the head (backbone, denoising set-up,
Hungarian matching, losses, optimizer) stays eager, and autograd joins the pieces: the graphed
backward hands gradients to the neck and to the head's parameters like any autograd node.

A layout is the set of given inputs plus every shape, dtype and requires_grad flag, the training
flag and the autocast state. Denoising groups are padded to a few bucket sizes
(`denoising.denoising_group_bucket`) so real data meets a handful of layouts; past `max_graphs`
layouts the head simply runs eagerly.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .denoising import CarriedDenoising, DenoisingQueries
from .head import HeadOutput, Sparse4DHead

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layout:
    """Which optional inputs a call has, and the denoising group geometry (not carried by tensors)."""

    num_levels: int
    dn_groups: int  # 0: no denoising queries
    dn_group_size: int
    carried: bool


def _dn_tensors(dn: DenoisingQueries) -> list[Tensor]:
    return [dn.anchors, dn.box_targets, dn.cls_targets, dn.valid, dn.instance_ids]


class _FlatHead(nn.Module):
    """The head as a function of a flat tuple of tensors, which is what make_graphed_callables takes."""

    def __init__(self, head: Sparse4DHead, layout: _Layout) -> None:
        super().__init__()
        self.head = head
        self.layout = layout

    def forward(self, *flat: Tensor):  # noqa: ANN201 - a pytree of tensors
        lay = self.layout
        maps = list(flat[: lay.num_levels])
        projection_mat, image_wh, time_interval, temporal_mask, prev_features, prev_anchors = flat[lay.num_levels : lay.num_levels + 6]
        rest = flat[lay.num_levels + 6 :]
        dn = carried = targets = None
        if lay.dn_groups:
            dn = DenoisingQueries(*rest[:5], num_groups=lay.dn_groups, group_size=lay.dn_group_size)
            rest = rest[5:]
        if lay.carried:
            carried = CarriedDenoising(*rest[:5])
            targets = (rest[5], rest[6])
        out = self.head(maps, projection_mat, image_wh, time_interval, temporal_mask, prev_features, prev_anchors, dn, carried, targets)
        dn_out = None if out.dn is None or not lay.carried else _dn_tensors(out.dn)[1:]
        return out.classification, out.prediction, out.quality, out.instance_feature, dn_out


def _leaf_signature(t: Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.requires_grad, str(t.device))


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class GraphedHead:
    """Calls `head` like `Sparse4DHead.forward`, replaying captured CUDA graphs for its forward and backward.

    Graph outputs are static buffers that the next replay of the same layout overwrites; the model
    reads them (losses, carried state) within the step, and the next step's inputs are copied into
    the graph's own input buffers before its replay, so nothing is read after being overwritten.
    All layouts share one memory pool: only one runs at a time.
    """

    def __init__(self, head: Sparse4DHead, max_graphs: int = 8, warmup_iters: int = 3) -> None:
        self.head = head
        self.max_graphs = max_graphs
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple, nn.Module] = {}
        self._pool = None
        self._warned_full = False

    def __deepcopy__(self, memo: dict) -> GraphedHead:
        """A copy of the model gets its own (empty) cache around its own copy of the head."""
        return GraphedHead(copy.deepcopy(self.head, memo), self.max_graphs, self.warmup_iters)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(
        self,
        feature_maps: list[Tensor],
        projection_mat: Tensor,
        image_wh: Tensor,
        time_interval: Tensor,
        temporal_mask: Tensor,
        prev_features: Tensor,
        prev_anchors: Tensor,
        dn: DenoisingQueries | None = None,
        carried_dn: CarriedDenoising | None = None,
        carried_dn_targets: tuple[Tensor, Tensor] | None = None,
    ) -> HeadOutput:
        carried = dn is not None and carried_dn is not None and carried_dn_targets is not None
        flat = [*feature_maps, projection_mat, image_wh, time_interval, temporal_mask, prev_features, prev_anchors]
        if dn is not None:
            flat += _dn_tensors(dn)
        if carried:
            flat += [carried_dn.features, carried_dn.anchors, carried_dn.cls_targets, carried_dn.valid, carried_dn.instance_ids, *carried_dn_targets]
        layout = _Layout(
            num_levels=len(feature_maps),
            dn_groups=dn.num_groups if dn is not None else 0,
            dn_group_size=dn.group_size if dn is not None else 0,
            carried=carried,
        )
        device = projection_mat.device
        key = (layout, self.head.training, _autocast_state(device.type), tuple(_leaf_signature(t) for t in flat))
        graphed = self._graphs.get(key)
        if graphed is None:
            if device.type != "cuda" or len(self._graphs) >= self.max_graphs:
                if len(self._graphs) >= self.max_graphs and not self._warned_full:
                    LOG.warning("graphed head: %d input layouts captured already; new layouts run eagerly", self.max_graphs)
                    self._warned_full = True
                return self.head(feature_maps, projection_mat, image_wh, time_interval, temporal_mask, prev_features, prev_anchors,
                                 dn, carried_dn if carried else None, carried_dn_targets if carried else None)
            graphed = self._capture(layout, flat, device)
            self._graphs[key] = graphed
        cls, pred, quality, instance_feature, dn_out = graphed(*flat)
        out_dn = dn
        if dn is not None and dn_out is not None:
            out_dn = DenoisingQueries(dn.anchors, *dn_out, num_groups=dn.num_groups, group_size=dn.group_size)
        return HeadOutput(classification=list(cls), prediction=list(pred), quality=list(quality), instance_feature=instance_feature, dn=out_dn)

    def _capture(self, layout: _Layout, flat: list[Tensor], device: torch.device) -> nn.Module:
        """make_graphed_callables on detached copies of this call's inputs (same shapes and grad flags)."""
        samples = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in flat)
        module = _FlatHead(self.head, layout)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        enabled, dtype = _autocast_state(device.type)
        # autocast's weight-cast cache would hand the capture casts made outside it; make_graphed_callables requires it off
        with torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
            graphed = torch.cuda.make_graphed_callables(
                module, samples, num_warmup_iters=self.warmup_iters, allow_unused_input=True, pool=self._pool
            )
        LOG.info("graphed head: captured layout %d (%s)", len(self._graphs) + 1, layout)
        return graphed
