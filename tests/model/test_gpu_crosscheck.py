"""Checks that need what only the accelerator machine has: CUDA, and torchvision/timm to compare with.

Skipped without CUDA (conftest) or without torchvision/timm installed.
"""
from __future__ import annotations

import copy

import pytest
import torch

from sparse4d.batch import TARGET_KEYS
from sparse4d.engine.runloop import move_batch
from sparse4d.model.backbone import ResNet
from sparse4d.model.sparse4d import Sparse4D

from .model_helpers import random_anchors, small_config, synthetic_batch


def _to(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else [x.to(device) for x in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v) for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("depth", ["resnet_18", "resnet_34", "resnet_50", "resnet_101"])
def test_torchvision_and_timm_weights_load(depth: str) -> None:
    tv = pytest.importorskip("torchvision")
    ref = getattr(tv.models, depth.replace("_", ""))().eval()
    ours = ResNet(depth, with_fc=True).eval()
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ours.load_imagenet_state_dict(ref.state_dict(), "torchvision")
    x = torch.randn(1, 3, 96, 96)
    trunk = torch.nn.Sequential(ref.conv1, ref.bn1, ref.relu, ref.maxpool, ref.layer1, ref.layer2, ref.layer3, ref.layer4)
    assert torch.allclose(ours(x)[-1], trunk(x), atol=1e-4)
    timm = pytest.importorskip("timm")
    timm_sd = timm.create_model(depth.replace("_", ""), pretrained=False).state_dict()
    ResNet(depth, frozen_bn=True).load_imagenet_state_dict(timm_sd, "timm")


@pytest.mark.gpu
def test_small_config_trains_on_cuda() -> None:
    torch.manual_seed(0)
    model = Sparse4D.from_config(small_config(), num_classes=3, anchors=random_anchors(64)).cuda().train()
    for frame in range(2):
        batch = _to(synthetic_batch(2, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame), "cuda")
        losses = model.loss(model(batch), batch)
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
    model.eval()
    dets = model.predict(_to(synthetic_batch(2, first_frame=False, timestamp=0.2, seed=5), "cuda"))
    assert len(dets) == 2


@pytest.mark.gpu
def test_gt_on_the_host_trains_like_gt_on_the_gpu() -> None:
    """The trainer leaves the GT on the host (denoising costs computed by the Hungarian workers); GT
    moved to the GPU computes them there. Same noise, same assignments: the same losses."""
    torch.manual_seed(0)
    base = Sparse4D.from_config(small_config(), num_classes=3, anchors=random_anchors(64)).cuda().train()
    runs = []
    for keep in (TARGET_KEYS, ()):
        model = copy.deepcopy(base)
        torch.manual_seed(1)  # the denoising noise and GridMask draw from the CPU generator
        frames = []
        for frame in range(2):
            batch = move_batch(synthetic_batch(2, num_gt=6, first_frame=frame == 0, timestamp=0.1 * frame, seed=frame), torch.device("cuda"), keep=keep)
            assert batch["gt_bboxes_3d"][0].device.type == ("cpu" if keep else "cuda")
            out = model(batch)
            assert out["dn"].anchors.is_cuda and out["dn"].box_targets.is_cuda
            losses = model.loss(out, batch)
            losses["loss"].backward()
            frames.append({k: float(v.detach()) for k, v in losses.items()})
        runs.append(frames)
    for host, device in zip(*runs):
        assert host.keys() == device.keys()
        for key in host:
            assert host[key] == pytest.approx(device[key], rel=1e-4, abs=1e-5), key
