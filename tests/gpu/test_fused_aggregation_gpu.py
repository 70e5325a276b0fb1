"""Fused Triton aggregation vs the grid_sample reference on a CUDA GPU (values and all gradients)."""
from __future__ import annotations

import pytest
import torch

from sparse4d.model.aggregation import deformable_aggregation, select_aggregation_impl, set_fused_aggregation_impl
from sparse4d.model.fused_aggregation import enable_fused_aggregation, fused_aggregation_available, fused_deformable_aggregation

pytestmark = pytest.mark.gpu

SIZES = [(32, 88), (16, 44), (8, 22), (4, 11)]


def make_inputs(seed: int, b: int = 2, n: int = 3, c: int = 64, groups: int = 8, q: int = 37, p: int = 13, interior: bool = True,
                dtype: torch.dtype = torch.float32, channels_last: bool = False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    feats = []
    for h, w in SIZES:
        f = torch.randn(b * n, c, h, w, generator=g, device="cuda", dtype=torch.float32)
        if channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        feats.append(f.reshape(b, n, c, h, w).to(dtype))
    if interior:  # keep every corner of every level inside the map: no clipping ambiguities
        points = torch.rand(b, q, p, n, 2, generator=g, device="cuda") * 0.8 + 0.1
    else:
        points = torch.rand(b, q, p, n, 2, generator=g, device="cuda") * 1.6 - 0.3
    logits = torch.randn(b, q, n * len(SIZES) * p, groups, generator=g, device="cuda")
    weights = logits.softmax(dim=2).reshape(b, q, n, len(SIZES), p, groups)
    return feats, points, weights


def run_both(feats, points, weights, grad_seed: int = 0):
    """Outputs and grads of (fused, float64 reference) for the same inputs and upstream gradient."""
    results = []
    grad = None
    for fn, cast in ((fused_deformable_aggregation, None), (deformable_aggregation, torch.float64)):
        fs = [(f.detach().to(cast) if cast else f.detach()).requires_grad_() for f in feats]
        pt = (points.detach().to(cast) if cast else points.detach()).requires_grad_()
        wt = (weights.detach().to(cast) if cast else weights.detach()).requires_grad_()
        out = fn(fs, pt, wt)
        if grad is None:
            gen = torch.Generator(device="cuda").manual_seed(grad_seed)
            grad = torch.randn(out.shape, generator=gen, device="cuda")
        out.backward(grad.to(out.dtype))
        results.append((out.detach().double(), pt.grad.double(), wt.grad.double(), [f.grad.double() for f in fs]))
    return results


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_kernel_is_available_on_this_gpu() -> None:
    assert fused_aggregation_available()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_interior_matches_reference_within_1e4(seed: int, channels_last: bool) -> None:
    feats, points, weights = make_inputs(seed, channels_last=channels_last)
    (out, gp, gw, gf), (r_out, r_gp, r_gw, r_gf) = run_both(feats, points, weights, grad_seed=seed)
    assert torch.isfinite(out).all()
    assert (out - r_out).abs().max() <= 1e-4
    assert (gw - r_gw).abs().max() <= 1e-4
    # point gradients scale with the map width (up to 88 here): compare relative to their size
    assert (gp - r_gp).abs().max() <= 1e-4 * max(1.0, float(r_gp.abs().max()))
    for a, r in zip(gf, r_gf):
        assert (a - r).abs().max() <= 1e-4


def test_fp32_points_outside_and_on_borders_match_reference() -> None:
    feats, points, weights = make_inputs(3, interior=False)
    points[0, 0, 0, 0] = torch.tensor([float("nan"), 0.5])  # NaN reads zeros, like a point behind the camera
    points[0, 1, 0, 0] = torch.tensor([-1.0, -1.0])
    (out, _, gw, gf), (r_out, _, r_gw, r_gf) = run_both(feats, points, weights)
    finite = torch.isfinite(r_out)
    assert torch.isfinite(out).all()
    assert (out[finite] - r_out[finite]).abs().max() <= 1e-4
    assert rel(gw.nan_to_num(), r_gw.nan_to_num()) <= 1e-5
    for a, r in zip(gf, r_gf):
        assert rel(a, r.nan_to_num()) <= 1e-5


def test_bf16_within_bf16_tolerance() -> None:
    feats, points, weights = make_inputs(4, dtype=torch.bfloat16, channels_last=True)
    (out, gp, gw, gf), (r_out, r_gp, r_gw, r_gf) = run_both(feats, points, weights)
    assert out.dtype == torch.float64  # (converted in run_both)
    assert rel(out, r_out) <= 1e-2
    assert rel(gw, r_gw) <= 1e-2
    assert rel(gp, r_gp) <= 2e-2
    for a, r in zip(gf, r_gf):
        assert rel(a, r) <= 1e-2


@pytest.mark.parametrize("mode", ["chunks", "segments"])
def test_backward_is_deterministic(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Both feature-gradient modes add in a fixed order (no atomics): run-to-run identical."""
    from sparse4d.model import fused_aggregation as fa

    monkeypatch.setattr(fa, "PIXEL_BACKWARD", mode)
    _check_backward_repeats_exactly()


def _check_backward_repeats_exactly() -> None:
    feats, points, weights = make_inputs(5)
    points[:, :20] = 0.43  # long runs on a few pixels, split over many chunks
    first = run_both(feats, points, weights)[0]
    second = run_both(feats, points, weights)[0]
    for a, b in zip(first[3], second[3]):
        assert torch.equal(a, b)
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])


def test_float64_falls_back_to_the_exact_reference() -> None:
    g = torch.Generator(device="cuda").manual_seed(6)
    feats = [torch.randn(1, 2, 8, h, w, generator=g, device="cuda", dtype=torch.float64) for h, w in [(6, 10), (3, 5)]]
    points = torch.rand(1, 3, 2, 2, 2, generator=g, device="cuda", dtype=torch.float64) * 0.6 + 0.2
    weights = torch.rand(1, 3, 2, 2, 2, 4, generator=g, device="cuda", dtype=torch.float64)
    # float64 is not a kernel dtype: the fused entry point must fall back to the reference and stay exact
    out = fused_deformable_aggregation(feats, points, weights)
    assert torch.equal(out, deformable_aggregation(feats, points, weights))


def test_enable_plugs_into_the_seam() -> None:
    try:
        assert enable_fused_aggregation()
        assert select_aggregation_impl(torch.device("cuda")) is fused_deformable_aggregation
        assert select_aggregation_impl(torch.device("cuda"), prefer_fused=False) is deformable_aggregation
        assert select_aggregation_impl(torch.device("cpu")) is deformable_aggregation
    finally:
        set_fused_aggregation_impl(None)


def test_levels_pack_channels_last_level_after_level() -> None:
    from sparse4d.model.aggregation import PackedLevels
    from sparse4d.model.fused_aggregation import pack_feature_levels

    feats, _, _ = make_inputs(3)
    levels = pack_feature_levels(feats)
    assert isinstance(levels, PackedLevels) and levels.level_hw == [s for hw in SIZES for s in hw]
    start = 0
    for feat in feats:
        assert torch.equal(levels.packed[start:start + feat.numel()], feat.permute(0, 1, 3, 4, 2).reshape(-1))
        start += feat.numel()
    assert start == levels.packed.numel()


def test_custom_ops_pass_opcheck() -> None:
    """Schema, fake (meta) shapes and the autograd registration agree with the kernels."""
    from sparse4d.model.fused_aggregation import pack_feature_levels

    feats, points, weights = make_inputs(4, q=9)
    levels = pack_feature_levels(feats)
    args = (levels.packed.requires_grad_(), points.requires_grad_(), weights.requires_grad_(), levels.level_hw)
    torch.library.opcheck(torch.ops.sparse4d.aggregate_packed.default, args)
    grad = torch.randn(points.shape[0], points.shape[1], feats[0].shape[2], device="cuda")
    torch.library.opcheck(torch.ops.sparse4d.aggregate_packed_backward.default,
                          (levels.packed.detach(), points.detach(), weights.detach(), grad, levels.level_hw))


def test_compiles_into_one_graph_with_the_same_values() -> None:
    """torch.compile(fullgraph=True) traces packing and the custom op: no graph break, same outputs and grads."""
    from sparse4d.model.fused_aggregation import pack_feature_levels

    feats, points, weights = make_inputs(5, channels_last=True)

    def aggregate(maps, pts, wts):
        return fused_deformable_aggregation(pack_feature_levels(maps), pts, wts)

    compiled = torch.compile(aggregate, fullgraph=True)
    results = []
    for fn in (aggregate, compiled):
        fs = [f.detach().clone().requires_grad_() for f in feats]
        pt, wt = points.detach().clone().requires_grad_(), weights.detach().clone().requires_grad_()
        out = fn(fs, pt, wt)
        out.backward(torch.ones_like(out))
        results.append([out, pt.grad, wt.grad, *[f.grad for f in fs]])
    for eager_value, compiled_value in zip(*results):
        assert torch.allclose(eager_value, compiled_value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 32])
def test_chunked_pixel_backward_matches_reference(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """PIXEL_BACKWARD="chunks": sorted entries cut into fixed chunks, runs spanning chunks summed
    through the carry rows. Most queries here sample one spot, so coarse-level runs span many chunks."""
    from sparse4d.model import fused_aggregation as fa

    monkeypatch.setattr(fa, "PIXEL_BACKWARD", "chunks")
    monkeypatch.setattr(fa, "CHUNK_ENTRIES", chunk)
    feats, points, weights = make_inputs(6)
    points[:, :30] = 0.43  # 30 of 37 queries on one spot: thousands of entries on a few pixels
    (out, gp, gw, gf), (r_out, r_gp, r_gw, r_gf) = run_both(feats, points, weights, grad_seed=6)
    assert (out - r_out).abs().max() <= 1e-4
    assert (gw - r_gw).abs().max() <= 1e-4
    assert (gp - r_gp).abs().max() <= 1e-4 * max(1.0, float(r_gp.abs().max()))
    for a, r in zip(gf, r_gf):
        assert (a - r).abs().max() <= 1e-4 * max(1.0, float(r.abs().max()))


def test_cameras_without_points_are_skipped_exactly() -> None:
    """Projected points fall in one or two cameras; the kernels skip the others' levels. Queries
    that see camera 0 only (one point just off its edge, whose corners still reach in), or no camera
    at all, must give the reference's outputs and gradients (zeros where nothing is sampled)."""
    feats, points, weights = make_inputs(7)
    points[:, 10:20, :, 1:] = 2.5  # cameras 1 and 2 unseen
    points[:, 15, 0, 1] = torch.tensor([-0.01, 0.5], device="cuda")  # ...but one point of query 15 grazes camera 1
    points[:, 20:25] = -1.0  # behind every camera, as project_points marks them
    (out, gp, gw, gf), (r_out, r_gp, r_gw, r_gf) = run_both(feats, points, weights, grad_seed=7)
    assert (out - r_out).abs().max() <= 1e-4 and out[:, 20:25].abs().max() == 0
    assert (gw - r_gw).abs().max() <= 1e-4 and gw[:, 20:25].abs().max() == 0
    assert (gp - r_gp).abs().max() <= 1e-4 * max(1.0, float(r_gp.abs().max()))
    for a, r in zip(gf, r_gf):
        assert (a - r).abs().max() <= 1e-4 * max(1.0, float(r.abs().max()))
