"""Box decoding: top-`num_output` queries, centerness re-scoring, score threshold, track ids.

`decode_topk` keeps fixed shapes (a `keep` mask instead of dropping rows) so it can live inside the
traced single-frame path; `to_detections` does the per-sample filtering for Python callers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .box_coding import decode_anchors
from .instance_bank import gather_rows
from .refinement import QUALITY_CNS


def decode_topk(cls_logits: Tensor, anchors: Tensor, quality: Tensor | None, track_ids: Tensor, num_output: int, score_threshold: float) -> dict[str, Tensor]:
    """cls_logits (B, A, C), anchors (B, A, 11), quality (B, A, 2) or None, track_ids (B, A).

    Each query contributes its best class. The top `num_output` by class score are kept; `keep`
    marks those whose class score reaches `score_threshold`. With quality estimation the final score
    is class score x sigmoid(centerness) and the rows are re-sorted by it. Scores are float32 even
    for bf16 logits (autocast inference): in bf16 every score above 0.996 would be 1.0, a tie.
    """
    probs = cls_logits.float().sigmoid()
    best, labels = probs.max(dim=-1)
    scores, index = best.topk(num_output, dim=1)
    keep = scores >= score_threshold
    cls_scores = scores
    quality_prob = None
    if quality is not None:
        quality_prob = gather_rows(quality, index).float().sigmoid()
        scores = scores * quality_prob[..., QUALITY_CNS]
        scores, order = scores.sort(dim=1, descending=True)
        index = torch.gather(index, 1, order)
        keep = torch.gather(keep, 1, order)
        cls_scores = torch.gather(cls_scores, 1, order)
        quality_prob = gather_rows(quality_prob, order)
    out = {
        "boxes_3d": decode_anchors(gather_rows(anchors, index)),
        "scores_3d": scores,
        "cls_scores": cls_scores,
        "labels_3d": torch.gather(labels, 1, index),
        "track_ids": torch.gather(track_ids, 1, index),
        "keep": keep,
        "query_index": index,
    }
    if quality_prob is not None:
        out["quality"] = quality_prob
    return out


def to_detections(decoded: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Per sample: boxes_3d (K, 10), scores_3d (K,), labels_3d (K,), track_ids (K,) int64, quality (K, 2)."""
    results = []
    for i in range(decoded["keep"].shape[0]):
        keep = decoded["keep"][i]
        det = {name: decoded[name][i][keep].detach().cpu() for name in ("boxes_3d", "scores_3d", "labels_3d", "track_ids", "cls_scores")}
        det["track_ids"] = det["track_ids"].to(torch.int64)
        det["quality"] = decoded["quality"][i][keep].detach().cpu() if "quality" in decoded else None
        results.append(det)
    return results
