"""Self attention of normal queries and denoising groups, block by block."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sparse4d.model.attention import InstanceAttention, self_attention_in_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from denoising_attention import dense_blocked  # noqa: E402  the masked-attention reference the benchmark times

A, G, M, C = 6, 3, 4, 16


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(2, A + G * M, C, generator=g, requires_grad=True)
    pos = torch.randn(2, A + G * M, C, generator=g, requires_grad=True)
    valid = torch.ones(2, G * M, dtype=torch.bool)
    valid[0, M - 1] = valid[0, 2 * M - 2 :] = False  # padding slots (a sample with fewer GT)
    valid[1, :] = False  # a sample without GT: every slot is padding
    return feature, pos, valid


@pytest.mark.parametrize("decouple", [True, False])
def test_equals_one_attention_with_the_denoising_mask(decouple: bool) -> None:
    torch.manual_seed(0)
    layer = InstanceAttention(C, num_heads=4, dropout=0.0, decouple=decouple)
    feature, pos, valid = inputs(1)
    grouped = self_attention_in_groups(layer, feature, pos, valid, G)
    grads = torch.autograd.grad(grouped.square().sum(), [feature, pos, *layer.parameters()])
    mask = dense_blocked(valid, A, M).repeat_interleave(4, dim=0)
    dense = layer(feature, pos, attn_mask=mask)
    dense_grads = torch.autograd.grad(dense.square().sum(), [feature, pos, *layer.parameters()])
    assert grouped.shape == dense.shape == feature.shape
    torch.testing.assert_close(grouped, dense, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, dense_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_groups_see_only_their_own_valid_slots_and_normal_queries_see_none() -> None:
    torch.manual_seed(0)
    layer = InstanceAttention(C, num_heads=4, dropout=0.0, decouple=True).eval()
    feature, pos, valid = inputs(2)
    base = self_attention_in_groups(layer, feature, pos, valid, G).detach()
    other_group = feature.detach().clone()
    other_group[:, A + M :] += 5.0  # groups 1 and 2 change
    out = self_attention_in_groups(layer, other_group, pos, valid, G).detach()
    torch.testing.assert_close(out[:, : A + M], base[:, : A + M])  # normal queries and group 0 unaffected
    padding_key = feature.detach().clone()
    padding_key[0, A + M - 1] += 5.0  # a padding slot of group 0: only its own output moves
    out = self_attention_in_groups(layer, padding_key, pos, valid, G).detach()
    torch.testing.assert_close(out[0, : A + M - 1], base[0, : A + M - 1])
    assert not torch.allclose(out[0, A + M - 1], base[0, A + M - 1])
    assert torch.isfinite(base).all()  # a sample with only padding slots: each sees itself, no NaN


def test_without_denoising_it_is_plain_self_attention() -> None:
    layer = InstanceAttention(C, num_heads=4, dropout=0.0, decouple=True)
    feature, pos, _ = inputs(3)
    torch.testing.assert_close(self_attention_in_groups(layer, feature, pos, None, 0), layer(feature, pos))


@pytest.mark.gpu
def test_bf16_on_the_gpu_matches_the_masked_attention() -> None:
    """On CUDA the normal block runs unmasked (flash-eligible) and the groups with small masks; under
    bf16 autocast it must still agree with one fp32 masked attention."""
    torch.manual_seed(0)
    layer = InstanceAttention(64, num_heads=8, dropout=0.0, decouple=True).cuda()
    g = torch.Generator(device="cuda").manual_seed(4)
    a, groups, size = 900, 5, 64
    feature = torch.randn(2, a + groups * size, 64, device="cuda", generator=g)
    pos = torch.randn(2, a + groups * size, 64, device="cuda", generator=g)
    valid = torch.rand(2, groups * size, device="cuda", generator=g) > 0.2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grouped = self_attention_in_groups(layer, feature, pos, valid, groups)
    dense = layer(feature, pos, attn_mask=dense_blocked(valid.cpu(), a, size).cuda().repeat_interleave(8, dim=0))
    torch.testing.assert_close(grouped.float(), dense, rtol=3e-2, atol=3e-2)
