"""Sparse4D v3 head: the decoder loop over `operation_order` with instance bank and denoising."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .aggregation import FeatureLevels, PackedLevels, prepare_feature_levels
from .anchor_encoder import AnchorEncoder
from .attention import InstanceAttention, self_attention_in_groups
from .blocks import AsymmetricFFN
from .deformable import DeformableFeatureAggregation
from .denoising import CarriedDenoising, DenoisingQueries
from .instance_bank import InstanceBank, move_by_velocity
from .refinement import BoxRefinement


@dataclass
class HeadOutput:
    """Per decoder layer outputs over all queries (A normal first, then any denoising queries)."""

    classification: list[Tensor] = field(default_factory=list)  # (B, L, C) logits
    prediction: list[Tensor] = field(default_factory=list)  # (B, L, 11) anchors
    quality: list[Tensor | None] = field(default_factory=list)  # (B, L, 2) logits
    instance_feature: Tensor | None = None  # (B, L, C) after the last layer
    dn: DenoisingQueries | None = None  # targets, updated for carried groups
    # per layer, the denoising targets its predictions answer to: the frame's own groups up to the
    # merge of carried instances, the groups with last frame's carried ones after it (upstream's temp_dn targets)
    layer_dn: list[DenoisingQueries | None] = field(default_factory=list)


class Sparse4DHead(nn.Module):
    def __init__(
        self,
        *,
        instance_bank: InstanceBank,
        anchor_encoder: AnchorEncoder,
        operation_order: list[str],
        layers: list[nn.Module | None],
        num_single_frame_decoder: int,
        temporal: bool,
        num_temp_dn_groups: int,
    ) -> None:
        super().__init__()
        self.instance_bank = instance_bank
        self.anchor_encoder = anchor_encoder
        self.operation_order = list(operation_order)
        self.layers = nn.ModuleList(nn.Identity() if layer is None else layer for layer in layers)
        self.num_single_frame_decoder = num_single_frame_decoder
        self.temporal = temporal and instance_bank.num_temp > 0
        self.num_temp_dn_groups = num_temp_dn_groups
        # Compiled regions of a training step (`engine.compile.compile_regions` swaps in compiled
        # copies): one call per decoder layer, shared by all layers, instead of one per module; and
        # the packing of the feature maps, so the packed buffer is a region's output, which CUDA-graph
        # replays read in place (an eager tensor would be copied into every layer's graph).
        self.decoder_layer = decoder_layer
        self.prepare_levels = prepare_feature_levels
        # Opt-in (benchmarks/train_throughput.py --gradient-sink): the fused kernels' backwards add the
        # packed-feature gradient into one persistent buffer per packed shape
        # (`fused_aggregation.attach_gradient_sink`) instead of one buffer per layer summed by autograd.
        # Session 18, H100: 2.45 ms less GPU time a step in the head's backward, but the step time
        # moved within its noise (-0.4 ms over three A/B pairs), so the default stays off; it also
        # allows only one backward per forward.
        self.gradient_sink = False
        self._sinks: dict[tuple, Tensor] = {}

    def sink_levels(self, levels: FeatureLevels) -> FeatureLevels:
        """`levels` with a gradient sink attached when `gradient_sink` is on and a packed buffer needs a
        gradient; else unchanged. The sink is allocated once per shape and keeps its address, which
        CUDA-graph replays of the layers' backwards write to."""
        if not (self.gradient_sink and isinstance(levels, PackedLevels) and levels.packed.requires_grad):
            return levels
        from .fused_aggregation import attach_gradient_sink

        packed = levels.packed
        key = (tuple(packed.shape), packed.dtype, packed.device)
        sink = self._sinks.get(key)
        if sink is None:
            sink = torch.empty(packed.shape, dtype=packed.dtype, device=packed.device)
            if sink.is_cuda:
                from torch._dynamo import mark_static_address

                mark_static_address(sink)
            self._sinks[key] = sink
        return attach_gradient_sink(levels, sink)

    @staticmethod
    def build_layers(
        operation_order: list[str],
        *,
        embed_dims: int,
        num_classes: int,
        deformable: dict,
        ffn: dict,
        graph: dict,
        temp_graph: dict,
        refine: dict,
        decouple_attn: bool,
        temporal: bool,
    ) -> list[nn.Module | None]:
        """One fresh module per step of `operation_order` (None for steps without parameters)."""
        layers: list[nn.Module | None] = []
        for op in operation_order:
            if op == "deformable":
                layers.append(DeformableFeatureAggregation(embed_dims=embed_dims, **deformable))
            elif op == "ffn":
                layers.append(AsymmetricFFN(embed_dims=embed_dims, **ffn))
            elif op == "norm":
                layers.append(nn.LayerNorm(embed_dims))
            elif op == "refine":
                layers.append(BoxRefinement(embed_dims, num_classes, **refine))
            elif op == "gnn":
                layers.append(InstanceAttention(embed_dims, decouple=decouple_attn, **graph))
            elif op == "temp_gnn":
                layers.append(InstanceAttention(embed_dims, decouple=decouple_attn, **temp_graph) if temporal else None)
            elif op == "identity":
                layers.append(None)
            else:
                raise ValueError(f"unknown operation {op!r}")
        return layers

    def forward(
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
        on_layer: Callable[[Tensor, Tensor], None] | None = None,
        levels: FeatureLevels | None = None,
    ) -> HeadOutput:
        """prev_features/prev_anchors: the instance bank state's carried instances (B, T, ...).

        carried_dn (and its targets) must already have the current denoising group size. `on_layer`
        gets each decoder layer's (class logits, anchors) as soon as they are queued (training starts
        that layer's matching there). `levels`: `feature_maps` already through `prepare_levels` (the
        training step packs them in the same compiled region as the backbone). Every
        branch here depends on which inputs are given and on shapes, never on tensor values, so one
        call can be captured in a CUDA graph (`graphed_stream.GraphedStream` captures whole frames).
        """
        b = projection_mat.shape[0]
        bank = self.instance_bank
        feature, anchor = bank.initial(b)
        carried_anchor = move_by_velocity(prev_anchors, time_interval)
        carried_feature = prev_features
        if dn is not None:
            anchor = torch.cat([anchor, dn.anchors.to(anchor.dtype)], dim=1)
            feature = torch.cat([feature, feature.new_zeros(b, dn.num_queries, feature.shape[-1])], dim=1)
        if levels is None:
            levels = self.prepare_levels(feature_maps, self.prefers_fused())
        # training: the anchor encoder's parameters as one tensor, so its six layers' gradients are
        # summed in one buffer (see AnchorEncoder); inference (export, quantized weights) uses the module
        anchor_params = self.anchor_encoder.flat_parameters() if self.training and torch.is_grad_enabled() else None
        out = HeadOutput(dn=dn)
        for ops, modules in self.decoder_segments():
            # Up to the first layer after the merge, temp_gnn keys are embedded from the carried anchors;
            # later layers use the first T rows of the queries' own embedding (upstream's order).
            temp_rows = bank.num_temp if self.temporal and len(out.prediction) > self.num_single_frame_decoder else 0
            feature, anchor, cls, quality = self.decoder_layer(
                ops, modules, self.anchor_encoder, anchor_params, feature, anchor, carried_anchor, temp_rows,
                carried_feature, temporal_mask, None if out.dn is None else out.dn.valid, 0 if dn is None else dn.num_groups,
                levels, projection_mat, image_wh, time_interval,
            )
            if cls is None:  # operations after the last refine
                continue
            out.prediction.append(anchor)
            out.classification.append(cls)
            out.quality.append(quality)
            out.layer_dn.append(out.dn)
            if on_layer is not None:
                on_layer(cls, anchor)
            if len(out.prediction) == self.num_single_frame_decoder and self.temporal:
                feature, anchor = bank.merge_carried(feature, anchor, cls, carried_feature, carried_anchor, temporal_mask)
                if dn is not None and carried_dn is not None and carried_dn_targets is not None:
                    feature, anchor, out.dn = self._insert_carried_dn(feature, anchor, dn, carried_dn, carried_dn_targets, temporal_mask, time_interval)
        out.instance_feature = feature
        return out

    def prefers_fused(self) -> bool:
        """Whether a deformable layer will use the fused kernel where one is plugged in (so the
        feature maps are packed for it)."""
        return any(getattr(layer, "prefer_fused", False) for layer in self.layers)

    def decoder_segments(self) -> list[tuple[tuple[str, ...], list[nn.Module]]]:
        """`operation_order` cut after every refine: one (operations, modules) pair per decoder layer,
        plus any operations after the last refine. Skipped operations (identity, temp_gnn without
        history) are left out."""
        segments: list[tuple[tuple[str, ...], list[nn.Module]]] = []
        ops: list[str] = []
        modules: list[nn.Module] = []
        for op, layer in zip(self.operation_order, self.layers):
            if op == "identity" or (op == "temp_gnn" and not self.temporal):
                continue
            ops.append(op)
            modules.append(layer)
            if op == "refine":
                segments.append((tuple(ops), modules))
                ops, modules = [], []
        if ops:
            segments.append((tuple(ops), modules))
        return segments

    def _insert_carried_dn(
        self,
        feature: Tensor,
        anchor: Tensor,
        dn: DenoisingQueries,
        carried: CarriedDenoising,
        targets: tuple[Tensor, Tensor],
        temporal_mask: Tensor,
        time_interval: Tensor,
    ) -> tuple[Tensor, Tensor, DenoisingQueries]:
        """Replace the first Gt denoising groups of slots with history by last frame's carried groups."""
        a = self.instance_bank.num_anchor
        b = feature.shape[0]
        g, m = dn.num_groups, dn.group_size
        gt_groups = carried.features.shape[1]
        if carried.features.shape[2] != m:
            raise ValueError(f"carried denoising groups have {carried.features.shape[2]} slots, this frame's have {m}: resize them first")
        box_t, cls_t = targets
        moved = move_by_velocity(carried.anchors.flatten(1, 2), time_interval).reshape(carried.anchors.shape)
        carried_vals = [carried.features.to(feature.dtype), moved.to(anchor.dtype), box_t, cls_t, carried.valid, carried.instance_ids]
        current = [
            feature[:, a:].reshape(b, g, m, -1),
            anchor[:, a:].reshape(b, g, m, -1),
            dn.box_targets.reshape(b, g, m, -1),
            dn.cls_targets.reshape(b, g, m),
            dn.valid.reshape(b, g, m),
            dn.instance_ids.reshape(b, g, m),
        ]
        merged = []
        for old, new in zip(carried_vals, current):
            sel = temporal_mask.reshape(b, *([1] * (new.dim() - 1)))
            head = torch.where(sel, old, new[:, :gt_groups])
            merged.append(torch.cat([head, new[:, gt_groups:]], dim=1).flatten(1, 2))
        new_dn = DenoisingQueries(
            anchors=dn.anchors,
            box_targets=merged[2],
            cls_targets=merged[3],
            valid=merged[4],
            instance_ids=merged[5],
            num_groups=g,
            group_size=m,
        )
        return torch.cat([feature[:, :a], merged[0]], dim=1), torch.cat([anchor[:, :a], merged[1]], dim=1), new_dn

    def carry_dn(self, out: HeadOutput) -> CarriedDenoising | None:
        """The first `num_temp_dn_groups` denoising groups of this frame, to continue next frame (copies:
        the head's outputs may be CUDA-graph buffers that the next step overwrites)."""
        dn = out.dn
        if dn is None or self.num_temp_dn_groups <= 0 or not self.temporal:
            return None
        a = self.instance_bank.num_anchor
        assert out.instance_feature is not None
        b = out.instance_feature.shape[0]
        g, m, gt = dn.num_groups, dn.group_size, self.num_temp_dn_groups
        return CarriedDenoising(
            features=out.instance_feature[:, a:].detach().reshape(b, g, m, -1)[:, :gt].clone(),
            anchors=out.prediction[-1][:, a:].detach().reshape(b, g, m, -1)[:, :gt].clone(),
            cls_targets=dn.cls_targets.reshape(b, g, m)[:, :gt].clone(),
            valid=dn.valid.reshape(b, g, m)[:, :gt].clone(),
            instance_ids=dn.instance_ids.reshape(b, g, m)[:, :gt].clone(),
        )


def decoder_layer(
    ops: tuple[str, ...],
    modules: list[nn.Module],
    anchor_encoder: AnchorEncoder,
    anchor_params: Tensor | None,
    feature: Tensor,
    anchor: Tensor,
    carried_anchor: Tensor,
    temp_rows: int,
    carried_feature: Tensor,
    temporal_mask: Tensor,
    dn_valid: Tensor | None,
    dn_groups: int,
    levels: FeatureLevels,
    projection_mat: Tensor,
    image_wh: Tensor,
    time_interval: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One decoder layer: embed the anchors (with `anchor_params` when given, the encoder's
    `flat_parameters`), then run `ops` (ending in refine, except for operations after the last
    refine). temp_gnn's keys are the carried instances, embedded from `carried_anchor`, or, once
    `temp_rows` > 0, the first `temp_rows` rows of the queries' own embedding. Returns (feature,
    anchor, class logits, quality); the logits are None without a refine.

    A plain function of tensors, so torch.compile makes one region of the whole layer that every layer
    reuses: one CUDA-graph replay per layer and direction instead of one per module.
    """
    anchor_embed = anchor_encoder(anchor, anchor_params)
    temp_anchor_embed = None
    if "temp_gnn" in ops:
        temp_anchor_embed = anchor_embed[:, :temp_rows] if temp_rows > 0 else anchor_encoder(carried_anchor, anchor_params)
    cls = quality = None
    for op, layer in zip(ops, modules):
        if op == "temp_gnn":
            attended = layer(feature, anchor_embed, carried_feature.to(feature.dtype), temp_anchor_embed)
            feature = torch.where(temporal_mask[:, None, None], attended, feature)
        elif op == "gnn":  # the dn_groups denoising groups (dn_valid (B, G*M), the last rows) attend only within themselves
            feature = self_attention_in_groups(layer, feature, anchor_embed, dn_valid, dn_groups)
        elif op in ("norm", "ffn"):
            feature = layer(feature)
        elif op == "deformable":
            feature = layer(feature, anchor, anchor_embed, levels, projection_mat, image_wh)
        elif op == "refine":
            anchor, cls, quality = layer(feature, anchor, anchor_embed, time_interval)
    return feature, anchor, cls, quality
