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
