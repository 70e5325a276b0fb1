"""Decoding the top queries: scores stay float32 and ordered under bf16 autocast."""
from __future__ import annotations

import torch

from sparse4d.model.decoder import decode_topk


def test_bf16_logits_give_distinct_float32_scores() -> None:
    """Confident queries differ in the fourth decimal; in bf16 their scores would all be 1.0 (a tie
    that makes the ranking arbitrary for mAP and for which instances the bank carries)."""
    logits = torch.tensor([[[6.0, -5.0], [6.5, -5.0], [7.0, -5.0], [8.0, -5.0], [-2.0, 1.0]]]).bfloat16()
    anchors = torch.zeros(1, 5, 11)
    anchors[..., 7] = 1.0
    quality = torch.full((1, 5, 2), 4.0).bfloat16()
    out = decode_topk(logits, anchors, quality, torch.arange(5)[None], num_output=4, score_threshold=0.1)
    scores = out["scores_3d"][0]
    assert scores.dtype == torch.float32 and out["quality"].dtype == torch.float32
    assert len(set(scores.tolist())) == 4  # no ties
    assert out["query_index"][0].tolist() == [3, 2, 1, 0]  # highest logit first
    expected = torch.sigmoid(torch.tensor([8.0, 7.0, 6.5, 6.0])) * torch.sigmoid(torch.tensor(4.0))
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)
