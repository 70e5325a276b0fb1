"""The fused-kernel module must import and degrade cleanly on CPU-only machines (CI)."""
from __future__ import annotations

import torch

from sparse4d.model import fused_aggregation
from sparse4d.model.aggregation import deformable_aggregation, select_aggregation_impl


def test_cpu_inputs_fall_back_to_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 2, 8, 5, 7, generator=g), torch.randn(1, 2, 8, 3, 4, generator=g)]
    points = torch.rand(1, 4, 3, 2, 2, generator=g)
    weights = torch.rand(1, 4, 2, 2, 3, 2, generator=g)
    got = fused_aggregation.fused_deformable_aggregation(feats, points, weights)
    assert torch.equal(got, deformable_aggregation(feats, points, weights))


def test_enable_reports_unavailability_without_cuda() -> None:
    if torch.cuda.is_available():
        return  # covered by tests/gpu/test_fused_aggregation_gpu.py
    assert fused_aggregation.fused_aggregation_available() is False
    assert fused_aggregation.enable_fused_aggregation() is False
    assert select_aggregation_impl(torch.device("cuda")) is deformable_aggregation


def test_mismatched_shapes_are_not_sent_to_the_kernel() -> None:
    feats = [torch.zeros(1, 2, 8, 5, 7)]
    points = torch.zeros(1, 4, 3, 2, 2)
    assert not fused_aggregation._kernel_applies(feats, points, torch.zeros(1, 4, 2, 2, 3, 2))  # 2 levels vs 1 map
    assert not fused_aggregation._kernel_applies(feats, points, torch.zeros(1, 4, 2, 1, 3, 3))  # 8 % 3 != 0


def test_levels_pack_into_one_aligned_channels_last_buffer() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 3, 5, 7, 9, generator=g), torch.randn(2, 3, 5, 3, 2, generator=g)]  # C=5: unaligned sizes
    packed, table, pixels = fused_aggregation._pack_levels(feats)
    assert pixels == 2 * 3 * (7 * 9 + 3 * 2)
    assert table.tolist() == [[0, 7, 9, 0], [1904, 3, 2, 2 * 3 * 7 * 9]]  # 2*3*7*9*5 = 1890 elements, padded to 16
    for (offset, h, w, _), feat in zip(table.tolist(), feats):
        level = packed[offset : offset + feat.numel()].view(2, 3, h, w, 5)
        assert torch.equal(level, feat.permute(0, 1, 3, 4, 2))
