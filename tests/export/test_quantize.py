"""TorchAO weight-only int8: the file really shrinks, loads safely, and evaluates through the engine."""
from __future__ import annotations

import json

import pytest
import torch

from sparse4d.engine.quantize import QUANTIZED_NAME, REPORT_NAME, Int8WeightConv2d, load_quantized_model, run_quantize
from sparse4d.errors import DataError, SpecError

from .conftest import build_checkpoint, data_overrides, make_spec, tiny_model_overrides


def quantize_spec(tmp_path, converted, checkpoint, **extra):
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "quant"))
    overrides.update({"quantize.model_path": str(checkpoint), "quantize.device": "cpu"})
    overrides.update(extra)
    return make_spec("quantize", overrides)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, converted):
    tmp_path = tmp_path_factory.mktemp("quantize")
    checkpoint, _, model = build_checkpoint(tmp_path, converted)
    spec = quantize_spec(tmp_path, converted, checkpoint, **{"quantize.device": "cuda"})
    if torch.cuda.is_available():
        path = run_quantize(spec)
    else:
        with pytest.warns(UserWarning, match="quantizing on cpu"):
            path = run_quantize(spec)
    return {"tmp": tmp_path, "path": path, "model": model, "checkpoint": checkpoint,
            "report": json.loads((tmp_path / "quant" / REPORT_NAME).read_text())}


def test_default_quantizes_every_eligible_layer_and_shrinks_the_weights(quantized):
    from torchao.quantization import Int8Tensor

    report = quantized["report"]
    print(f"\nquantize: {report['size_before_bytes'] / 1e6:.2f} MB -> {report['size_after_bytes'] / 1e6:.2f} MB "
          f"({report['compression']:.2f}x), val mAP {report['mAP_before']:.4f} -> {report['mAP_after']:.4f}")
    assert report["num_quantized"] == report["num_eligible"] > 0
    assert report["size_before_bytes"] >= 2 * report["size_after_bytes"]
    assert quantized["checkpoint"].stat().st_size >= 2 * quantized["path"].stat().st_size
    assert report["mAP_before"] is not None and report["mAP_after"] is not None
    model = load_quantized_model(quantized["path"])
    kinds = {type(m.weight) for m in model.modules() if type(m) is torch.nn.Linear}  # MHA's out_proj is a subclass
    assert Int8Tensor in kinds
    assert not any(type(m) is torch.nn.Conv2d for m in model.modules())
    assert any(isinstance(m, Int8WeightConv2d) for m in model.modules())


def test_quantized_checkpoint_is_weights_only_and_close_to_the_float_model(quantized):
    from sparse4d.engine.checkpoint import load_checkpoint_file

    with pytest.raises(DataError):  # without the scoped allow-list the tensor subclass is refused
        load_checkpoint_file(quantized["path"])
    model = load_quantized_model(quantized["path"])
    reference = quantized["model"]
    img, proj, wh, dt, first, state = reference.example_inputs(1)
    img = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference.forward_frame(img, proj, wh, dt, first, state)[0]["classification"]
        got = model.forward_frame(img, proj, wh, dt, first, state)[0]["classification"]
    error = (got - want).abs()
    relative = float(error.norm() / want.norm())  # int8 weights: a few percent of the logits, not exact
    print(f"quantized vs float logits: relative {relative:.4f}, mean {float(error.mean()):.4f}, max {float(error.max()):.4f}")
    assert relative < 0.1 and float(error.mean()) < 0.05, (relative, float(error.mean()), float(error.max()))
    assert not torch.equal(got, want)  # really quantized, not the float weights


def test_quantized_checkpoint_evaluates_through_the_engine(quantized, converted):
    from sparse4d.engine.evaluate import run_evaluate

    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, quantized["tmp"] / "evaluate"))
    overrides.update({"evaluate.checkpoint": str(quantized["path"])})
    kpi = run_evaluate(make_spec("evaluate", overrides))
    print(f"\nquantized checkpoint evaluate: mAP {kpi['mAP']:.4f}")
    assert kpi["mAP"] == pytest.approx(quantized["report"]["mAP_after"], abs=1e-9)


def test_layer_patterns_and_skip_names(tmp_path, converted):
    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    spec = quantize_spec(tmp_path, converted, checkpoint, **{"quantize.layers": ["head.*"], "quantize.skip_names": ["head.layers.3"]})
    run_quantize(spec)
    report = json.loads((tmp_path / "quant" / REPORT_NAME).read_text())
    names = [layer["name"] for layer in report["quantized_layers"]]
    assert names and all(n.startswith("head.") for n in names)
    assert not any(n.startswith("head.layers.3.") for n in names)
    assert not any(".attn." in n for n in names)
    bad = quantize_spec(tmp_path, converted, checkpoint, **{"quantize.layers": ["no_such_layer"]})
    with pytest.raises(SpecError) as info:
        run_quantize(bad)
    assert info.value.key == "quantize.layers"


def test_static_ptq_is_refused_with_the_alternative(tmp_path, converted):
    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    images = tmp_path / "calib"
    images.mkdir()
    spec = quantize_spec(tmp_path, converted, checkpoint, **{"quantize.mode": "static_ptq",
                                                             "dataset.quant_calibration_dataset.images_dir": str(images)})
    with pytest.raises(SpecError) as info:
        run_quantize(spec)
    assert info.value.key == "quantize.mode" and "weight_only_ptq" in str(info.value)
    assert not (tmp_path / "quant" / QUANTIZED_NAME).exists()
