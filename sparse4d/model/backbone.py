"""ResNet-18/34/50/101 image backbone returning the four stage outputs (C2..C5).

Parameter names follow torchvision's layout (conv1, bn1, layer1..layer4, downsample.0/1, fc), which
timm's ResNets share, so an ImageNet state dict from either loads with `load_imagenet_state_dict`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sparse4d.errors import DataError

# depth -> (block kind, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet_18": ("basic", (2, 2, 2, 2)),
    "resnet_34": ("basic", (3, 4, 6, 3)),
    "resnet_50": ("bottleneck", (3, 4, 6, 3)),
    "resnet_101": ("bottleneck", (3, 4, 23, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms (buffers, not parameters).

    Small per-GPU batches of multi-camera images make batch statistics noisy; freezing keeps the
    ImageNet statistics. Buffer names match nn.BatchNorm2d so the same state dict loads.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, frozen_bn: bool) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = _norm(width, frozen_bn)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = _norm(out_ch, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride, frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, frozen_bn: bool) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = _norm(width, frozen_bn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _norm(width, frozen_bn)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _norm(out_ch, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride, frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_ch: int, out_ch: int, stride: int, frozen_bn: bool) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _norm(out_ch, frozen_bn))


class ResNet(nn.Module):
    """ResNet trunk; `forward` returns [C2, C3, C4, C5] (strides 4, 8, 16, 32)."""

    def __init__(self, depth: str, *, frozen_bn: bool = False, activation_checkpointing: bool = False, with_fc: bool = False) -> None:
        super().__init__()
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.activation_checkpointing = activation_checkpointing
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _norm(64, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        self.out_channels: list[int] = []
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layers = []
            for i in range(count):
                layers.append(block(in_ch, width, 2 if (i == 0 and stage > 0) else 1, frozen_bn))
                in_ch = width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
            self.out_channels.append(in_ch)
        self.fc = nn.Linear(in_ch, 1000) if with_fc else None

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        for block in stage:
            if self.activation_checkpointing and self.training and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)
            outs.append(x)
        return outs

    def load_imagenet_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load torchvision/timm ImageNet weights; the classifier (`fc.*`) is dropped when absent here.

        Raises DataError naming `source` when a trunk weight is missing or has the wrong shape.
        """
        wanted = {k: v for k, v in state_dict.items() if not (self.fc is None and k.startswith("fc."))}
        own = self.state_dict()
        bad_shape = [k for k, v in wanted.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if bad_shape:
            raise DataError(f"{source}: {len(bad_shape)} weights have the wrong shape for this ResNet (first: {bad_shape[0]})", hint="check model.backbone.type against the weights")
        result = self.load_state_dict(wanted, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise DataError(
                f"{source}: not a matching ResNet state dict (missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})",
                hint="use torchvision/timm ImageNet weights of the configured model.backbone.type",
            )
