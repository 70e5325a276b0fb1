"""The anchor encoder's one-tensor parameter path: same values and gradients, far fewer gradient adds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse4d.model.anchor_encoder import AnchorEncoder
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import RecordOps, random_anchors, small_config, synthetic_batch


def anchors(rows: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(random_anchors(rows, seed)) + 0.1 * torch.randn(rows, 11, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode,output_fc", [("cat", False), ("add", True)])
def test_flat_parameters_give_the_same_embedding_and_gradients(mode: str, output_fc: bool) -> None:
    torch.manual_seed(0)
    dims = [32, 8, 8, 16] if mode == "cat" else [32] * 4
    encoder = AnchorEncoder(dims, mode=mode, output_fc=output_fc, out_loops=2)
    inputs = [anchors(20, seed) for seed in range(6)]  # six "decoder layers" share the encoder

    def grads(flat: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        params = encoder.flat_parameters() if flat else None
        out = torch.stack([encoder(x, params) for x in inputs])
        (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters()]

    out_module, grads_module = grads(False)
    out_flat, grads_flat = grads(True)
    torch.testing.assert_close(out_flat, out_module, rtol=0, atol=0)
    for (name, _), a, b in zip(encoder.named_parameters(), grads_flat, grads_module):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_flat_parameters_sum_gradients_once_per_use_not_per_parameter() -> None:
    torch.manual_seed(0)
    encoder = AnchorEncoder([32, 8, 8, 16], out_loops=4)  # the default's 4 MLPs x 4 loops: 64 parameter tensors
    assert len(list(encoder.parameters())) == 64
    inputs = [anchors(20, seed) for seed in range(6)]

    def adds(flat: bool) -> int:
        params = encoder.flat_parameters() if flat else None
        loss = sum(encoder(x, params).sum() for x in inputs)
        with RecordOps() as ops:
            loss.backward()
        encoder.zero_grad(set_to_none=True)
        return sum(func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_) for func, _, _ in ops.calls)

    module_adds, flat_adds = adds(False), adds(True)
    assert module_adds >= 64 * 5  # every parameter summed over six uses
    assert flat_adds <= module_adds - 64 * 5 + 5  # one buffer summed over six uses


def test_wrong_flat_parameters_are_a_clear_error() -> None:
    encoder = AnchorEncoder([32, 8, 8, 16], out_loops=2)
    with pytest.raises(ValueError, match="flat_parameters"):
        encoder(anchors(4, 0), torch.zeros(10))


def test_training_head_uses_one_parameter_tensor_and_matches_the_module_path(tmp_path, monkeypatch) -> None:
    """Losses and every gradient of a training step with the flat path equal the per-module path's."""
    path = tmp_path / "anchor_init.npy"
    np.save(path, random_anchors(64))
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(str(path)), num_classes=3).train()
    encoder = model.head.anchor_encoder
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
            torch.testing.assert_close(grads_flat[name], grads_module[name], rtol=1e-5, atol=1e-7, msg=name)
