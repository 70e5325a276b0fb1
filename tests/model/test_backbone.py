"""ResNet parameter names match torchvision's, so ImageNet weights load; frozen BN and FPN shapes."""
from __future__ import annotations

import pytest
import torch

from sparse4d.errors import DataError
from sparse4d.model.backbone import FrozenBatchNorm2d, ResNet
from sparse4d.model.neck import FPN, add_upsampled

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision.models.resnet18().state_dict() layout, written out: conv / bn module names per block.
TORCHVISION_RESNET18_MODULES = [
    ("conv", "conv1"), ("bn", "bn1"),
    ("conv", "layer1.0.conv1"), ("bn", "layer1.0.bn1"), ("conv", "layer1.0.conv2"), ("bn", "layer1.0.bn2"),
    ("conv", "layer1.1.conv1"), ("bn", "layer1.1.bn1"), ("conv", "layer1.1.conv2"), ("bn", "layer1.1.bn2"),
    ("conv", "layer2.0.conv1"), ("bn", "layer2.0.bn1"), ("conv", "layer2.0.conv2"), ("bn", "layer2.0.bn2"),
    ("conv", "layer2.0.downsample.0"), ("bn", "layer2.0.downsample.1"),
    ("conv", "layer2.1.conv1"), ("bn", "layer2.1.bn1"), ("conv", "layer2.1.conv2"), ("bn", "layer2.1.bn2"),
    ("conv", "layer3.0.conv1"), ("bn", "layer3.0.bn1"), ("conv", "layer3.0.conv2"), ("bn", "layer3.0.bn2"),
    ("conv", "layer3.0.downsample.0"), ("bn", "layer3.0.downsample.1"),
    ("conv", "layer3.1.conv1"), ("bn", "layer3.1.bn1"), ("conv", "layer3.1.conv2"), ("bn", "layer3.1.bn2"),
    ("conv", "layer4.0.conv1"), ("bn", "layer4.0.bn1"), ("conv", "layer4.0.conv2"), ("bn", "layer4.0.bn2"),
    ("conv", "layer4.0.downsample.0"), ("bn", "layer4.0.downsample.1"),
    ("conv", "layer4.1.conv1"), ("bn", "layer4.1.bn1"), ("conv", "layer4.1.conv2"), ("bn", "layer4.1.bn2"),
]


def torchvision_resnet18_keys() -> list[str]:
    keys = []
    for kind, name in TORCHVISION_RESNET18_MODULES:
        keys += [f"{name}.weight"] if kind == "conv" else [f"{name}.{s}" for s in BN]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_state_dict_keys_match_torchvision() -> None:
    model = ResNet("resnet_18", with_fc=True)
    assert list(model.state_dict().keys()) == torchvision_resnet18_keys()
    assert model.state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert model.state_dict()["fc.weight"].shape == (1000, 512)


def test_resnet50_bottleneck_names_and_shapes() -> None:
    sd = ResNet("resnet_50").state_dict()
    assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert "layer3.5.bn3.running_var" in sd and "layer3.6.conv1.weight" not in sd


def test_imagenet_weights_load_into_frozen_bn_and_drop_fc() -> None:
    torch.manual_seed(0)
    source = ResNet("resnet_18", with_fc=True)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    target = ResNet("resnet_18", frozen_bn=True)
    target.load_imagenet_state_dict(source.state_dict(), "imagenet.pth")
    assert isinstance(target.bn1, FrozenBatchNorm2d)
    assert torch.equal(target.layer3[0].bn2.running_mean, source.layer3[0].bn2.running_mean)
    source.eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(source(x), target(x)):
        assert torch.allclose(a, b, atol=1e-5)
    assert not any(p.requires_grad for n, p in target.named_parameters() if "bn" in n)


def test_mismatched_weights_are_a_clear_error() -> None:
    with pytest.raises(DataError, match="wrong shape"):
        ResNet("resnet_18").load_imagenet_state_dict(ResNet("resnet_50").state_dict())
    with pytest.raises(DataError, match="missing"):
        ResNet("resnet_18").load_imagenet_state_dict({"conv1.weight": torch.zeros(64, 3, 7, 7)})


def test_stage_outputs_and_fpn_extra_levels() -> None:
    net = ResNet("resnet_18", activation_checkpointing=True)
    feats = net(torch.randn(1, 3, 64, 128))
    assert [f.shape[1:] for f in feats] == [(64, 16, 32), (128, 8, 16), (256, 4, 8), (512, 2, 4)]
    fpn = FPN([64, 128, 256, 512], 32, num_outs=5, start_level=1, add_extra_convs="on_output")
    outs = fpn(feats)
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 8, 16), (32, 4, 8), (32, 2, 4), (32, 1, 2), (32, 1, 1)]
    pooled = FPN([64, 128, 256, 512], 32, num_outs=5, add_extra_convs="False")(feats)
    assert tuple(pooled[-1].shape[1:]) == (32, 1, 2)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("coarse_hw", [(4, 8), (3, 5)])
def test_add_upsampled_equals_nearest_interpolation_with_gradients(memory_format: torch.memory_format, coarse_hw: tuple[int, int]) -> None:
    """The 2x broadcast path (and the interpolate fallback for other ratios) gives mmdetection's
    fine + interpolate(coarse, nearest) exactly, with the same gradients and memory format."""
    fine_hw = (8, 16) if coarse_hw == (4, 8) else (7, 11)
    generator = torch.Generator().manual_seed(0)
    fine = torch.randn(2, 6, *fine_hw, generator=generator).contiguous(memory_format=memory_format)
    coarse = torch.randn(2, 6, *coarse_hw, generator=generator).contiguous(memory_format=memory_format)
    upstream = torch.randn(2, 6, *fine_hw, generator=generator)
    results = []
    for combine in (add_upsampled, lambda f, c: f + torch.nn.functional.interpolate(c, size=f.shape[-2:], mode="nearest")):
        f, c = fine.clone().requires_grad_(), coarse.clone().requires_grad_()
        out = combine(f, c)
        out.backward(upstream)
        results.append((out, f.grad, c.grad))
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, atol=1e-6)
    assert results[0][0].is_contiguous(memory_format=memory_format)
