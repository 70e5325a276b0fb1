"""The fused aggregation's gradient sink (`fused_aggregation.attach_gradient_sink`), run on the CPU by
Triton's interpreter: decoder layers that add their packed-feature gradient into one buffer give
the gradients of the plain kernels, summed by autograd, in both pixel-backward modes, eagerly and
compiled (AOTAutograd traces the ops through their fake implementations)."""
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
base = [torch.randn(b, n, c, h, w) for h, w in sizes]
layers = []
for k in range(3):
    points = torch.rand(b, q, p, n, 2) * 1.2 - 0.1
    points[:, :3] = 0.5 - 0.1 * k  # clustered: long runs of entries on a few pixels
    layers.append((points, torch.rand(b, q, n, len(sizes), p, g), torch.randn(b, q, c)))


def layer_fn(packed, points, weights, level_hw, token, sink):
    return torch.ops.sparse4d.aggregate_packed_sinking(packed, points, weights, level_hw, token, sink).sin()


def run(kind, mode, sink=None, aggregate=None):
    fa.PIXEL_BACKWARD = mode
    maps = [m.clone().requires_grad_() for m in base]
    inputs = [(pts.clone().requires_grad_(), wts.clone().requires_grad_(), go) for pts, wts, go in layers]
    levels = PackedLevels.pack(maps)
    if kind == "sink":
        levels = fa.attach_gradient_sink(levels, sink)
        assert not levels.packed.requires_grad and levels.token.requires_grad
    loss = 0.0
    for pts, wts, go in inputs:
        if kind == "reference":
            out = deformable_aggregation(maps, pts, wts).sin()
        elif kind == "plain":
            out = torch.ops.sparse4d.aggregate_packed(levels.packed, pts, wts, levels.level_hw).sin()
        else:
            out = aggregate(levels.packed, pts, wts, levels.level_hw, levels.token, levels.sink)
        loss = loss + (out * go).sum()
    loss.backward()
    return [m.grad for m in maps] + [t.grad for pts, wts, _ in inputs for t in (pts, wts)]


def close(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        err = float((x - y).abs().max())
        assert err <= 1e-4 * max(1.0, float(y.abs().max())), (what, i, err)


reference = run("reference", "chunks")
sink = torch.full_like(PackedLevels.pack(base).packed, 7.0)  # stale values: the sink zeroes it each forward
for mode in ("chunks", "segments"):
    plain = run("plain", mode)
    close(plain, reference, (mode, "plain"))
    for step in range(2):  # the same sink again: zeroed, not accumulated across steps
        close(run("sink", mode, sink, layer_fn), plain, (mode, "sink", step))
compiled = torch.compile(layer_fn, backend="aot_eager")
close(run("sink", "chunks", sink, compiled), reference, "compiled")
bad = torch.zeros(3)
try:
    fa.attach_gradient_sink(PackedLevels.pack(base), bad)
    raise SystemExit("a sink of the wrong shape was accepted")
except ValueError as error:
    assert "does not match the packed levels" in str(error)
print("ok")
'''


def test_a_gradient_sink_gives_the_summed_gradients_in_the_interpreter() -> None:
    run = run_in_triton_interpreter(CHECK, timeout=900)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def _sunk_levels(maps, sink):
    from sparse4d.model import fused_aggregation as fa
    from sparse4d.model.aggregation import PackedLevels

    return fa.attach_gradient_sink(PackedLevels.pack(maps), sink)


def test_a_gradient_sink_refuses_a_backward_it_would_get_wrong() -> None:
    """The sink is one buffer per head: a second backward through one graph, or one backward through
    two forwards that shared it, would hand on gradients summed from both. They raise; one backward
    per forward, in order, works (a forward whose graph is dropped unused is fine too)."""
    import torch

    maps = [torch.randn(1, 2, 4, 3, 5, requires_grad=True)]
    sink = torch.empty(1 * 2 * 3 * 5 * 4)  # the packed buffer is flat

    for _ in range(2):  # forward, backward; forward, backward
        _sunk_levels(maps, sink).token.backward()
    _sunk_levels(maps, sink)  # dropped without a backward
    _sunk_levels(maps, sink).token.backward()

    token = _sunk_levels(maps, sink).token
    token.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        token.backward()

    first, second = _sunk_levels(maps, sink).token, _sunk_levels(maps, sink).token
    with pytest.raises(RuntimeError, match="head.gradient_sink = False"):
        (first + second).backward()
