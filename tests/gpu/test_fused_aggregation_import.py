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


def test_level_table_addresses_each_level_after_the_previous_one() -> None:
    rows, pixels = fused_aggregation._level_rows([7, 9, 3, 2], batch=2, cams=3, channels=16)
    assert pixels == 2 * 3 * (7 * 9 + 3 * 2)
    assert rows == [[0, 7, 9, 0], [2 * 3 * 7 * 9 * 16, 3, 2, 2 * 3 * 7 * 9]]


def test_a_kept_level_table_is_what_the_kernels_read() -> None:
    """`keep_level_table` builds a shape's table once (from eager code), and every later call for
    that shape gets that tensor: a CUDA graph then reads it instead of capturing a fill kernel per
    entry. A shape without a kept table gets a new one each call."""
    from sparse4d.model.aggregation import PackedLevels

    maps = [torch.zeros(2, 3, 16, 7, 9), torch.zeros(2, 3, 16, 3, 2)]
    rows, _ = fused_aggregation._level_rows([7, 9, 3, 2], batch=2, cams=3, channels=16)
    cpu = torch.device("cpu")
    assert fused_aggregation._table_tensor(rows, cpu) is not fused_aggregation._table_tensor(rows, cpu)
    fused_aggregation.keep_level_table(PackedLevels.pack(maps))
    table = fused_aggregation._table_tensor(rows, cpu)
    assert table.tolist() == rows and table.dtype == torch.int64
    assert fused_aggregation._table_tensor([list(row) for row in rows], cpu) is table
    other, _ = fused_aggregation._level_rows([7, 9, 3, 2], batch=1, cams=3, channels=16)
    assert fused_aggregation._table_tensor(other, cpu).tolist() == other


def test_maps_the_kernel_cannot_read_stay_unpacked() -> None:
    on_cpu = [torch.zeros(1, 2, 16, 5, 7)]
    assert fused_aggregation.pack_feature_levels(on_cpu) is on_cpu
    assert not fused_aggregation._maps_fit_kernel([torch.zeros(1, 2, 8, 5, 7)])  # C=8: levels would start unaligned
