"""The Triton kernels of the fused aggregation, run on the CPU by Triton's interpreter.

GPU tests (tests/gpu) check them on CUDA; this checks the same arithmetic where CI runs, whenever
Triton is installed. The interpreter must be chosen before the kernels are defined, so the check runs
in a fresh interpreter process (TRITON_INTERPRET=1)."""
from __future__ import annotations

import pytest

from .model_helpers import run_in_triton_interpreter

pytest.importorskip("triton")

CHECK = r'''
import torch
from sparse4d.model import fused_aggregation as fa
from sparse4d.model.aggregation import PackedLevels, deformable_aggregation

torch.manual_seed(0)
b, q, p, n, g, c = 2, 7, 3, 2, 2, 32
sizes = [(6, 10), (3, 5), (1, 2)]
maps = [torch.randn(b, n, c, h, w, dtype=torch.float64).float() for h, w in sizes]
points = torch.rand(b, q, p, n, 2) * 1.2 - 0.1  # some outside the maps
points[:, :3] = 0.5  # three queries on one spot: runs longer than a chunk
points[:, 3:5] = 0.31  # two on another: a chunk can end one crossing run and start the next
points[:, 5:, :, 1] = 2.5  # the last queries see camera 0 only: the kernels skip camera 1's levels
points[:, 6, 0, 1] = -0.01  # ...except one point just off the left edge, whose corners reach in
weights = torch.rand(b, q, n, len(sizes), p, g)
grad_out = torch.randn(b, q, c)
levels = PackedLevels.pack(maps)
packed, level_hw = levels.packed, levels.level_hw
assert all(torch.equal(view, level) for view, level in zip(levels.views(), maps))

ref_maps = [m.clone().requires_grad_() for m in maps]
ref_points, ref_weights = points.clone().requires_grad_(), weights.clone().requires_grad_()
ref_out = deformable_aggregation(ref_maps, ref_points, ref_weights)
ref_out.backward(grad_out)
ref_packed = torch.cat([m.grad.permute(0, 1, 3, 4, 2).reshape(-1) for m in ref_maps])

out = fa._aggregate_packed(packed, points, weights, level_hw)
assert (out - ref_out).abs().max() < 1e-5, "forward"
for mode, chunk in (("segments", 0), ("chunks", 1), ("chunks", 2), ("chunks", 3), ("chunks", 4), ("chunks", 7), ("chunks", 32)):
    fa.PIXEL_BACKWARD, fa.CHUNK_ENTRIES = mode, max(chunk, 1)
    g_packed, g_points, g_weights = fa._aggregate_packed_backward(packed, points, weights, grad_out, level_hw)
    assert g_packed.dtype == packed.dtype
    assert (g_packed - ref_packed).abs().max() < 1e-5, (mode, chunk, "features")
    assert (g_weights - ref_weights.grad).abs().max() < 1e-5, (mode, chunk, "weights")
    assert (g_points - ref_points.grad).abs().max() < 1e-4 * max(1.0, float(ref_points.grad.abs().max())), (mode, chunk, "points")
print("ok")
'''


def test_kernels_match_the_reference_in_the_interpreter() -> None:
    run = run_in_triton_interpreter(CHECK, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
