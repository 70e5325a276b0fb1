"""The anchor encoder's one-tensor parameter path: same values and gradients as the modules, far fewer
gradient adds, and its four MLPs stacked side by side (one GEMM and one normalisation per loop)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.model.anchor_encoder import AnchorEncoder
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import RecordOps, random_anchors, small_config, synthetic_batch


def anchors(rows: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(random_anchors(rows, seed)) + 0.1 * torch.randn(rows, 11, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "mode,output_fc,in_loops,vel_dims,stack",
    [("cat", False, 1, 3, True), ("add", True, 2, 3, True), ("cat", True, 1, 0, True), ("cat", False, 1, 2, True),
     ("cat", False, 1, 3, False), ("add", True, 2, 3, False)],
)
def test_flat_parameters_give_the_same_embedding_and_gradients(mode: str, output_fc: bool, in_loops: int, vel_dims: int, stack: bool) -> None:
    """In float64 the stacked branches equal the modules to rounding: same LayerNorm per branch, zero
    blocks that add nothing, and each parameter's gradient gathered back from its one place. So does
    the unstacked one-tensor path (`stack_branches` off)."""
    torch.manual_seed(0)
    dims = [32, 8, 8, 16] if mode == "cat" else [32] * 4
    encoder = AnchorEncoder(dims, vel_dims=vel_dims, mode=mode, output_fc=output_fc, in_loops=in_loops, out_loops=2).double()
    encoder.stack_branches = stack
    inputs = [anchors(20, seed).double() for seed in range(6)]  # six "decoder layers" share the encoder

    def grads(flat: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        params = encoder.flat_parameters() if flat else None
        out = torch.stack([encoder(x, params) for x in inputs])
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum().backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters()]

    out_module, grads_module = grads(False)
    out_flat, grads_flat = grads(True)
    assert out_flat.dtype == out_module.dtype == torch.float64
    torch.testing.assert_close(out_flat, out_module, rtol=1e-12, atol=1e-12)
    for (name, _), a, b in zip(encoder.named_parameters(), grads_flat, grads_module):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_float32_stacked_path_matches_under_autocast_dtypes() -> None:
    """float32: same values to float32 rounding, and float32 out (what autocast's layer_norm gives)."""
    torch.manual_seed(0)
    encoder = AnchorEncoder([32, 8, 8, 16], out_loops=4)
    encoder.stack_branches = True
    x = anchors(50, 1)
    stacked, module = encoder(x, encoder.flat_parameters()), encoder(x)
    assert stacked.dtype == module.dtype == torch.float32
    torch.testing.assert_close(stacked, module, rtol=1e-4, atol=1e-5)


def count_ops(fn, ops: tuple) -> tuple[int, int]:
    """(calls of `ops` in fn's forward, in its backward)."""
    with RecordOps() as forward:
        loss = fn()
    with RecordOps() as backward:
        loss.backward()
    return tuple(sum(func.overloadpacket in ops for func, _, _ in rec.calls) for rec in (forward, backward))


def test_stacked_branches_run_one_gemm_and_no_per_branch_layer_norm_per_loop() -> None:
    """The default encoder's 4 MLPs x 4 loops: 16 GEMMs and 16 LayerNorms per call as modules; one
    block-diagonal GEMM per loop (4) and no LayerNorm kernel per branch when stacked."""
    torch.manual_seed(0)
    encoder = AnchorEncoder([128, 32, 32, 64], out_loops=4)
    x = anchors(30, 2)
    assert not encoder.stack_branches  # eagerly the branches run one by one (stacking pays only compiled)
    encoder.stack_branches = True
    gemms = (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm)
    norms = (torch.ops.aten.native_layer_norm, torch.ops.aten.native_layer_norm_backward)
    assert count_ops(lambda: encoder(x).sum(), gemms)[0] == 16
    assert count_ops(lambda: encoder(x).sum(), norms) == (16, 16)
    flat = lambda: encoder(x, encoder.flat_parameters()).sum()  # noqa: E731
    forward_gemms, backward_gemms = count_ops(flat, gemms)
    assert forward_gemms == 4
    assert backward_gemms <= 2 * 4  # input and weight gradients of each stacked Linear
    assert count_ops(flat, norms) == (0, 0)


@pytest.mark.parametrize("stack", [True, False])
def test_flat_parameters_sum_gradients_once_per_use_not_per_parameter(stack: bool) -> None:
    torch.manual_seed(0)
    encoder = AnchorEncoder([32, 8, 8, 16], out_loops=4)  # the default's 4 MLPs x 4 loops: 64 parameter tensors
    encoder.stack_branches = stack
    parameter_shapes = {tuple(p.shape) for p in encoder.parameters()}
    assert len(list(encoder.parameters())) == 64
    inputs = [anchors(20, seed) for seed in range(6)]

    def adds(flat: bool) -> tuple[int, int]:
        """(adds into parameter-shaped tensors, adds into the one flat tensor) in the backward."""
        params = encoder.flat_parameters() if flat else None
        loss = sum(encoder(x, params).sum() for x in inputs)
        with RecordOps() as ops:
            loss.backward()
        encoder.zero_grad(set_to_none=True)
        shapes = [tuple(args[0].shape) for func, args, _ in ops.calls if func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_)]
        flat_shape = tuple(params.shape) if params is not None else None
        return sum(shape in parameter_shapes for shape in shapes), sum(shape == flat_shape for shape in shapes)

    assert adds(False)[0] >= 64 * 5  # every parameter summed over six uses
    assert adds(True) == (0, 5)  # one buffer summed over six uses


def test_wrong_flat_parameters_are_a_clear_error() -> None:
    encoder = AnchorEncoder([32, 8, 8, 16], out_loops=2)
    with pytest.raises(ValueError, match="flat_parameters"):
        encoder(anchors(4, 0), torch.zeros(10))


@pytest.mark.parametrize("stack", [False, True])
def test_training_head_uses_one_parameter_tensor_and_matches_the_module_path(tmp_path, monkeypatch, stack: bool) -> None:
    """Losses and every gradient of a training step with the flat path (branches one by one, or
    stacked) equal the per-module path's, to float32 rounding."""
    path = tmp_path / "anchor_init.npy"
    np.save(path, random_anchors(64))
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(str(path)), num_classes=3).train()
    encoder = model.head.anchor_encoder
    encoder.stack_branches = stack
    calls = []
    flat_parameters = encoder.flat_parameters
    monkeypatch.setattr(encoder, "flat_parameters", lambda: calls.append(1) or flat_parameters())

    def step(frame: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(100 + frame)  # the same denoising noise and GridMask in both runs
        batch = synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame)
        loss = model.loss(model(batch), batch)["loss"]
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    state = {k: v.clone() for k, v in model.state_dict().items()}
    flat_run = [step(frame) for frame in range(2)]
    assert len(calls) == 2  # once per step, not per layer
    model.load_state_dict(state)
    model.reset_temporal_state()
    monkeypatch.setattr(encoder, "flat_parameters", lambda: None)  # the per-module path
    module_run = [step(frame) for frame in range(2)]
    for (loss_flat, grads_flat), (loss_module, grads_module) in zip(flat_run, module_run):
        torch.testing.assert_close(loss_flat, loss_module, rtol=1e-6, atol=0)
        assert grads_flat.keys() == grads_module.keys()
        assert any(name.startswith("head.anchor_encoder.") for name in grads_flat)
        for name in grads_flat:
            scale = float(grads_module[name].abs().max())
            torch.testing.assert_close(grads_flat[name], grads_module[name], rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_segment_layer_norm_backward_scatters_nothing() -> None:
    """The per-segment statistics reach the elements by a product with the membership, so the backward
    has only reductions: indexing by segment would scatter-add (atomics on a GPU, ~2 ms per step)."""
    from sparse4d.model.grouped_branches import segment_index, segment_layer_norm

    x = torch.randn(6, 40, requires_grad=True)
    weight, bias = torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)
    out = segment_layer_norm(x, segment_index([16, 8, 16]), 3, weight, bias, 1e-5)
    with RecordOps() as ops:
        out.square().sum().backward()
    scatters = {torch.ops.aten.index_put, torch.ops.aten._index_put_impl_, torch.ops.aten.index_add, torch.ops.aten.scatter_add,
                torch.ops.aten.index_put_, torch.ops.aten.scatter_add_}
    assert not [func for func, _, _ in ops.calls if func.overloadpacket in scatters]
    expected = torch.cat([torch.nn.functional.layer_norm(part, (part.shape[-1],)) for part in x.detach().split([16, 8, 16], -1)], -1)
    torch.testing.assert_close(out.detach(), expected * weight.detach() + bias.detach(), rtol=1e-5, atol=1e-5)


def test_branches_of_different_depths_cannot_be_stacked() -> None:
    from torch import nn

    from sparse4d.model.blocks import linear_relu_ln
    from sparse4d.model.grouped_branches import BranchLayout

    with pytest.raises(ValueError, match="same layers"):
        BranchLayout([nn.Sequential(*linear_relu_ln(8, 1, 2, 3)), nn.Sequential(*linear_relu_ln(8, 1, 3, 3))])
