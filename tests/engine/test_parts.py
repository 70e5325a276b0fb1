"""Fast unit tests: schedule shape, pretrained loading, checkpoint safety, precision fallback."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparse4d.config.train import LrSchedulerConfig, OptimConfig
from sparse4d.engine.checkpoint import atomic_torch_save, capture_rng_state, load_checkpoint_file, point_latest, restore_rng_state
from sparse4d.engine.devices import PrecisionFallbackWarning, resolve_precision
from sparse4d.engine.optim import build_optimizer, build_scheduler, lr_factor
from sparse4d.engine.pretrained import load_pretrained
from sparse4d.errors import DataError, InputFileError
from sparse4d.model.backbone import ResNet


class TinyDetector(nn.Module):
    """A module laid out like the detector: `backbone` (a real ResNet-18) plus a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNet("resnet_18")
        self.head = nn.Linear(4, 2)


def test_schedule_warms_up_linearly_then_cosines_to_min_ratio() -> None:
    cfg = LrSchedulerConfig.model_validate({"warmup_iters": 10, "warmup_ratio": 0.25, "min_lr_ratio": 0.01})
    model = nn.Linear(2, 2)
    optim = build_optimizer(model, OptimConfig.model_validate({"lr": 1.0, "type": "sgd"}))
    scheduler = build_scheduler(optim, cfg, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.25)
    assert lrs[5] == pytest.approx(0.25 + 0.75 * 0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[60] == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)  # half way through the cosine
    assert optim.param_groups[0]["lr"] == pytest.approx(0.01)  # after the last step: min_lr_ratio
    assert lr_factor(3, total_steps=4, warmup_iters=500, warmup_ratio=0.5, min_lr_ratio=0.0) < 1.0
    assert lr_factor(4, total_steps=4, warmup_iters=500, warmup_ratio=0.5, min_lr_ratio=0.0) == pytest.approx(1.0)  # warmup capped: it ends with the run


def test_backbone_group_gets_lr_mult_and_optimizer_types() -> None:
    model = TinyDetector()
    for kind, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        cfg = OptimConfig.model_validate({"type": kind, "lr": 0.01, "momentum": 0.8, "weight_decay": 0.05,
                                          "paramwise_cfg": {"custom_keys": {"img_backbone": {"lr_mult": 0.1}}}})
        optim = build_optimizer(model, cfg)
        assert isinstance(optim, cls)
        groups = {g["name"]: g for g in optim.param_groups}
        assert groups["img_backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == pytest.approx(0.01)
        assert len(groups["head"]["params"]) == 2
        assert groups["head"]["weight_decay"] == 0.05
        if kind == "sgd":
            assert groups["head"]["momentum"] == 0.8
        else:
            assert not optim.defaults["fused"]  # fused Adam(W) only for parameters on a GPU


@pytest.mark.gpu
def test_adam_optimizers_are_fused_on_the_gpu() -> None:
    model = TinyDetector().cuda()
    for kind in ("adamw", "adam"):
        optim = build_optimizer(model, OptimConfig.model_validate({"type": kind, "lr": 0.01}))
        assert optim.defaults["fused"] is True
        model.head(torch.randn(1, 4, device="cuda")).sum().backward()
        before = model.head.weight.detach().clone()
        optim.step()
        assert not torch.equal(before, model.head.weight)
        optim.zero_grad(set_to_none=True)


def _imagenet_weights(prefix: str = "") -> dict[str, torch.Tensor]:
    source = ResNet("resnet_18", with_fc=True)
    return {prefix + k: v.clone() for k, v in source.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "backbone.", "img_backbone.", "module.backbone."])
def test_imagenet_backbone_loads_with_counts(prefix: str, tmp_path: Path, capsys) -> None:
    weights = _imagenet_weights(prefix)
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    model = TinyDetector()
    report = load_pretrained(model, path)
    assert report.kind == "backbone" and not report.missing and not report.unexpected
    assert len(report.matched) == len([k for k in weights if ".fc." not in k and not k.startswith(prefix + "fc.")])
    torch.testing.assert_close(model.backbone.conv1.weight, weights[prefix + "conv1.weight"])
    assert f"{len(report.matched)} matched, 0 missing, 0 unexpected" in capsys.readouterr().out


def test_full_model_checkpoint_loads(tmp_path: Path) -> None:
    source = TinyDetector()
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "full.pth")
    model = TinyDetector()
    report = load_pretrained(model, tmp_path / "full.pth")
    assert report.kind == "full model" and len(report.matched) == len(source.state_dict())
    torch.testing.assert_close(model.head.weight, source.head.weight)


def test_pretrained_refusals(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="no weight matches"):
        load_pretrained(TinyDetector(), tmp_path / "other.pth")
    partial = _imagenet_weights()
    partial.pop("layer4.1.conv2.weight")
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="strict load failed"):
        load_pretrained(TinyDetector(), tmp_path / "partial.pth")
    report = load_pretrained(TinyDetector(), tmp_path / "partial.pth", strict=False)
    assert report.missing == ["backbone.layer4.1.conv2.weight"]
    resnet34 = ResNet("resnet_34").state_dict()
    wrong = {k: v for k, v in ResNet("resnet_50").state_dict().items() if k in resnet34}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match="wrong shape"):
        load_pretrained(TinyDetector(), tmp_path / "wrong.pth")
    with pytest.raises(InputFileError):
        load_pretrained(TinyDetector(), tmp_path / "absent.pth")


class CarriesCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "payload": CarriesCode()}, tmp_path / "evil.pth")
    with pytest.raises(DataError, match="refused"):
        load_checkpoint_file(tmp_path / "evil.pth")
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_checkpoint_file(tmp_path / "torn.pth")


def test_atomic_save_latest_pointer_and_rng_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "model_epoch_001_step_00004.pth"
    atomic_torch_save({"rng": capture_rng_state(), "x": torch.arange(3)}, target)
    latest = point_latest(target)
    assert latest.name == "model_latest.pth" and latest.read_bytes() == target.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_epoch_001_step_00004.pth", "model_latest.pth"]
    saved = torch.load(target, weights_only=True)["rng"]
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    restore_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.testing.assert_close(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]


def test_half_precision_on_cpu_falls_back_with_a_warning() -> None:
    with pytest.warns(PrecisionFallbackWarning, match="fp32"):
        assert resolve_precision("bf16", on_gpu=False) == "32-true"
    with pytest.warns(PrecisionFallbackWarning):
        assert resolve_precision("fp16", on_gpu=False) == "32-true"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", on_gpu=False) == "32-true"
    assert math.isfinite(lr_factor(0, 1, 0, 0.0, 0.0))
