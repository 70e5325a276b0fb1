"""Deformable aggregation vs a float64 loop over cameras, levels, points and groups."""
from __future__ import annotations

import math

import torch

from sparse4d.model.aggregation import deformable_aggregation, select_aggregation_impl


def bilinear(feat: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """Sample (C, H, W) at normalised (u, v) with pixel centres at half-integers, zeros outside."""
    c, h, w = feat.shape
    x, y = u * w - 0.5, v * h - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(c, dtype=torch.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wx = (x - x0) if dx else (1 - (x - x0))
            wy = (y - y0) if dy else (1 - (y - y0))
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * feat[:, yi, xi]
    return out


def test_matches_float64_loop_on_interior_points() -> None:
    g = torch.Generator().manual_seed(11)
    b, n, c, groups, q, p = 2, 3, 8, 2, 4, 5
    sizes = [(12, 20), (6, 10), (3, 5)]
    feats = [torch.randn(b, n, c, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    points = torch.rand(b, q, p, n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2  # interior
    weights = torch.rand(b, q, n, len(sizes), p, groups, generator=g, dtype=torch.float64)
    got = deformable_aggregation(feats, points, weights)
    assert got.shape == (b, q, c)
    cg = c // groups
    for bi in range(b):
        for qi in range(q):
            expected = torch.zeros(c, dtype=torch.float64)
            for ni in range(n):
                for li, feat in enumerate(feats):
                    for pi in range(p):
                        u, v = float(points[bi, qi, pi, ni, 0]), float(points[bi, qi, pi, ni, 1])
                        sample = bilinear(feat[bi, ni], u, v)
                        for gi in range(groups):
                            sl = slice(gi * cg, (gi + 1) * cg)
                            expected[sl] += weights[bi, qi, ni, li, pi, gi] * sample[sl]
            assert torch.allclose(got[bi, qi], expected, atol=1e-10)


def test_points_outside_read_zero() -> None:
    feats = [torch.ones(1, 1, 4, 6, 6, dtype=torch.float64)]
    points = torch.full((1, 2, 1, 1, 2), -1.0, dtype=torch.float64)
    weights = torch.ones(1, 2, 1, 1, 1, 1, dtype=torch.float64)
    assert float(deformable_aggregation(feats, points, weights).abs().sum()) == 0.0


def test_cpu_uses_reference_implementation() -> None:
    assert select_aggregation_impl(torch.device("cpu")) is deformable_aggregation
