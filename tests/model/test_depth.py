"""Dense depth branch: values, no full-size fp32 copy of the features under autocast, the loss."""
from __future__ import annotations

import torch

from sparse4d.model.depth import DenseDepthNet, downsample_depth

from .model_helpers import RecordOps


def test_depth_is_exp_of_a_1x1_conv_scaled_by_focal() -> None:
    torch.manual_seed(0)
    net = DenseDepthNet(16, num_depth_layers=2, loss_weight=0.2)
    feats = [torch.randn(2, 3, 16, 8, 12), torch.randn(2, 3, 16, 4, 6), torch.randn(2, 3, 16, 2, 3)]
    focal = torch.tensor([[100.0, 200.0, 50.0], [100.0, 100.0, 100.0]])
    depths = net(feats, focal)
    assert len(depths) == 2
    for layer, feat, depth in zip(net.depth_layers, feats, depths):
        expected = layer(feat.flatten(0, 1)).exp().reshape(2, 3, *feat.shape[-2:]) * (focal / 100.0)[..., None, None]
        assert torch.allclose(depth, expected)


def test_autocast_features_are_not_copied_to_float32() -> None:
    net = DenseDepthNet(16, num_depth_layers=1, loss_weight=0.2)
    feats = [torch.randn(2, 3, 16, 8, 12, dtype=torch.bfloat16)]
    with torch.autocast("cpu", dtype=torch.bfloat16), RecordOps() as ops:
        depth = net(feats, torch.full((2, 3), 100.0))[0]
    assert depth.dtype == torch.float32 and torch.isfinite(depth).all()
    float_copies = [tuple(args[0].shape) for func, args, kwargs in ops.calls
                    if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float32]
    assert (6, 16, 8, 12) not in float_copies  # only the 1-channel output is made float32
    # without autocast, bf16 features are cast to the conv's dtype
    assert net(feats, torch.full((2, 3), 100.0))[0].dtype == torch.float32


def test_loss_uses_the_nearest_known_depth_per_cell() -> None:
    gt = torch.zeros(1, 1, 4, 4)
    gt[0, 0, 0, 0], gt[0, 0, 1, 1] = 5.0, 3.0  # one cell: the closer surface wins
    assert torch.equal(downsample_depth(gt, (2, 2))[0, 0], torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    net = DenseDepthNet(4, num_depth_layers=1, loss_weight=1.0)
    pred = [torch.full((1, 1, 2, 2), 4.0)]
    assert torch.isclose(net.loss(pred, gt), torch.tensor(1.0))  # |4 - 3| over the one known cell
    assert net.loss(pred, torch.zeros(1, 1, 4, 4)) == 0


def test_packed_views_are_the_maps_and_give_the_depth_loss_the_same_gradients() -> None:
    """Packed (the fused kernel's buffer) the depth head reads views of the packed copy: the same
    values as the maps, channels-last strides, and the gradient reaching the maps through the
    packing is the one the maps would get directly."""
    from sparse4d.model.aggregation import PackedLevels

    torch.manual_seed(0)
    net = DenseDepthNet(16, num_depth_layers=2, loss_weight=0.2).double()
    shapes = [(8, 12), (4, 6), (2, 3)]
    maps = [torch.randn(2, 3, 16, h, w, dtype=torch.float64, requires_grad=True) for h, w in shapes]
    focal = torch.tensor([[100.0, 200.0, 50.0], [100.0, 100.0, 100.0]], dtype=torch.float64)
    gt = torch.rand(2, 3, 16, 24, dtype=torch.float64) * 20

    levels = PackedLevels.pack(maps)
    views = levels.views()
    assert levels.level_hw == [8, 12, 4, 6, 2, 3]
    for view, level in zip(views, maps):
        assert torch.equal(view, level) and view.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)

    direct = torch.autograd.grad(net.loss(net(maps, focal), gt), maps, allow_unused=True, materialize_grads=True)
    packed = torch.autograd.grad(net.loss(net(views, focal), gt), maps, allow_unused=True, materialize_grads=True)
    for a, b in zip(direct, packed):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert direct[0].abs().sum() > 0 and direct[2].abs().sum() == 0  # depth on the first two levels only
