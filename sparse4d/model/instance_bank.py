"""Instance bank: learnable anchors plus the instances carried between frames, as explicit state.

The temporal state is a small dataclass of tensors so the single-frame path stays a pure function
(state in, state out) that ONNX export can trace; `Sparse4D` keeps one between calls for training
and evaluation.

Track-ID rule: the first `num_temp_instances` queries of a frame are the carried instances and keep
their IDs; any query still without an ID whose confidence reaches the tracking threshold gets a new
ID from the per-sequence counter; IDs restart at 0 when a sequence starts (`first_frame`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor, nn

from sparse4d.batch import ANCHOR_DIMS, ANCHOR_VX
from sparse4d.errors import DataError, InputFileError


@dataclass
class InstanceBankState:
    """Carried instances of each batch slot (T = num_temp_instances)."""

    features: Tensor  # (B, T, C) instance features of the previous frame (detached)
    anchors: Tensor  # (B, T, 11) their refined anchors, in the previous frame's time
    confidences: Tensor  # (B, T) decayed confidences used to rank what is carried
    track_ids: Tensor  # (B, T) int64, -1 = no ID yet
    next_track_id: Tensor  # (B,) int64, next ID to hand out in the slot's sequence
    timestamp: Tensor  # (B,) float64 seconds of the previous frame
    valid: Tensor  # (B,) bool, the slot holds instances of a running sequence

    @staticmethod
    def empty(batch_size: int, num_temp: int, embed_dims: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> InstanceBankState:
        return InstanceBankState(
            features=torch.zeros(batch_size, num_temp, embed_dims, device=device, dtype=dtype),
            anchors=torch.zeros(batch_size, num_temp, ANCHOR_DIMS, device=device, dtype=dtype),
            confidences=torch.zeros(batch_size, num_temp, device=device, dtype=dtype),
            track_ids=torch.full((batch_size, num_temp), -1, device=device, dtype=torch.int64),
            next_track_id=torch.zeros(batch_size, device=device, dtype=torch.int64),
            timestamp=torch.zeros(batch_size, device=device, dtype=torch.float64),
            valid=torch.zeros(batch_size, device=device, dtype=torch.bool),
        )

    def as_tuple(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @staticmethod
    def from_tuple(values: tuple[Tensor, ...] | list[Tensor]) -> InstanceBankState:
        return InstanceBankState(*values)

    def kept(self) -> InstanceBankState:
        """A detached copy that owns its memory: the tensors a frame produced may live in CUDA-graph
        output buffers (compiled regions with mode="reduce-overhead") that the next step overwrites."""
        return InstanceBankState(*(t.detach().clone() for t in self.as_tuple()))

    @property
    def batch_size(self) -> int:
        return int(self.valid.shape[0])


def move_by_velocity(anchors: Tensor, time_interval: Tensor) -> Tensor:
    """Carry anchors forward in a static world frame: centre += velocity x dt."""
    moved = anchors[..., :3] + anchors[..., ANCHOR_VX:] * time_interval[:, None, None].to(anchors.dtype)
    return torch.cat([moved, anchors[..., 3:]], dim=-1)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (B, Q, ...) indexed along Q by index (B, K)."""
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return torch.gather(values, 1, expanded)


class InstanceBank(nn.Module):
    """Learnable anchors/features for `num_anchor` queries and the frame-to-frame carry of `num_temp`."""

    def __init__(self, anchors: np.ndarray | Tensor, embed_dims: int, num_temp_instances: int, confidence_decay: float, feat_grad: bool = False) -> None:
        super().__init__()
        anchors = torch.as_tensor(np.asarray(anchors), dtype=torch.float32)
        self.num_anchor = anchors.shape[0]
        self.embed_dims = embed_dims
        self.num_temp = num_temp_instances
        self.confidence_decay = confidence_decay
        self.anchor = nn.Parameter(anchors.clone())
        self.instance_feature = nn.Parameter(torch.zeros(self.num_anchor, embed_dims), requires_grad=feat_grad)

    def initial(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(B, A, C) features and (B, A, 11) anchors every frame starts from."""
        return self.instance_feature[None].expand(batch_size, -1, -1), self.anchor[None].expand(batch_size, -1, -1)

    def merge_carried(self, feature: Tensor, anchor: Tensor, cls: Tensor, carried_feature: Tensor, carried_anchor: Tensor, temporal_mask: Tensor) -> tuple[Tensor, Tensor]:
        """After the single-frame decoder: keep the top (A - T) current queries and put the T carried first.

        Only the first A queries (no denoising tail) take part; slots without history keep their own.
        """
        a, t = self.num_anchor, self.num_temp
        cur_f, cur_a = feature[:, :a], anchor[:, :a]
        score = cls[:, :a].max(dim=-1).values
        top = score.topk(a - t, dim=1).indices
        merged_f = torch.cat([carried_feature.to(cur_f.dtype), gather_rows(cur_f, top)], dim=1)
        merged_a = torch.cat([carried_anchor.to(cur_a.dtype), gather_rows(cur_a, top)], dim=1)
        mask = temporal_mask[:, None, None]
        out_f = torch.where(mask, merged_f, cur_f)
        out_a = torch.where(mask, merged_a, cur_a)
        return torch.cat([out_f, feature[:, a:]], dim=1), torch.cat([out_a, anchor[:, a:]], dim=1)

    def assign_track_ids(self, state: InstanceBankState, confidence: Tensor, temporal_mask: Tensor, first_frame: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        """confidence (B, A) in [0, 1]. Returns (track ids (B, A), next counter (B,))."""
        b, a = confidence.shape
        t = self.num_temp
        ids = torch.full((b, a), -1, dtype=torch.int64, device=confidence.device)
        if t > 0:
            inherited = torch.where(temporal_mask[:, None], state.track_ids, torch.full_like(state.track_ids, -1))
            ids = torch.cat([inherited, ids[:, t:]], dim=1)
        base = torch.where(first_frame | ~state.valid, torch.zeros_like(state.next_track_id), state.next_track_id)
        new = (ids < 0) & (confidence >= threshold)
        new_ids = base[:, None] + new.long().cumsum(dim=1) - 1
        ids = torch.where(new, new_ids, ids)
        return ids, base + new.long().sum(dim=1)

    def carry_index(self, state: InstanceBankState, confidence: Tensor, temporal_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(ranking confidences, query indices), each (B, T): the instances `next_state` carries on."""
        t = self.num_temp
        a = self.num_anchor
        if t > 0:
            decayed = torch.maximum(state.confidences * self.confidence_decay, confidence[:, :t])
            head = torch.where(temporal_mask[:, None], decayed, confidence[:, :t])
            rank = torch.cat([head, confidence[:, t:a]], dim=1)
        else:
            rank = confidence[:, :a]
        return rank.topk(t, dim=1)

    def next_state(
        self,
        state: InstanceBankState,
        feature: Tensor,
        anchor: Tensor,
        confidence: Tensor,
        track_ids: Tensor,
        next_track_id: Tensor,
        temporal_mask: Tensor,
        timestamp: Tensor,
    ) -> InstanceBankState:
        """Cache the T most confident instances (carried ones ranked by their decayed confidence)."""
        a = self.num_anchor
        conf, top = self.carry_index(state, confidence, temporal_mask)
        return InstanceBankState(
            features=gather_rows(feature[:, :a].detach(), top),
            anchors=gather_rows(anchor[:, :a].detach(), top),
            confidences=conf.detach(),
            track_ids=gather_rows(track_ids, top),
            next_track_id=next_track_id,
            timestamp=timestamp.to(torch.float64),
            valid=torch.ones_like(state.valid),
        )


def load_anchors(path: str, num_anchor: int, key: str = "model.head.instance_bank.anchor") -> np.ndarray:
    """Read anchor_init.npy (rows of 11 values) and keep the first `num_anchor` rows.

    Missing file -> InputFileError; unreadable, wrong shape, too few rows or non-finite values ->
    DataError; both name the spec key.
    """
    import os

    if not path:
        raise InputFileError("no anchor file given", key=key, hint="run dataset_convert and point this key at its anchor_init.npy")
    if not os.path.isfile(path):
        raise InputFileError(f"anchor file not found: {path}", key=key, hint="run dataset_convert and point this key at its anchor_init.npy")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read anchor file {path}: {exc}", key=key, hint="regenerate it with dataset_convert") from None
    if arr.ndim != 2 or arr.shape[1] != ANCHOR_DIMS:
        raise DataError(f"anchor file {path} has shape {tuple(arr.shape)}, expected (N, {ANCHOR_DIMS})", key=key, hint="regenerate it with dataset_convert")
    if arr.shape[0] < num_anchor:
        raise DataError(
            f"anchor file {path} has {arr.shape[0]} rows but model.head.instance_bank.num_anchor is {num_anchor}",
            key=key,
            hint="lower num_anchor or regenerate the anchors with more clusters",
        )
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr[:num_anchor])):
        raise DataError(f"anchor file {path} contains non-finite or non-numeric values", key=key, hint="regenerate it with dataset_convert")
    return arr[:num_anchor].astype(np.float32)


__all__ = ["InstanceBankState", "InstanceBank", "load_anchors", "move_by_velocity", "gather_rows", "replace"]
