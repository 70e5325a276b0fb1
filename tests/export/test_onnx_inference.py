"""`sparse4d inference` with an .onnx checkpoint writes the same results as the PyTorch inference."""
from __future__ import annotations

import json

import pytest

from sparse4d.engine.export import run_export
from sparse4d.errors import SpecError

from .conftest import HEIGHT, WIDTH, build_checkpoint, data_overrides, make_spec, tiny_model_overrides


def inference_spec(tmp_path, converted, checkpoint, folder, **extra):
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / folder))
    overrides.update({"inference.checkpoint": str(checkpoint), "inference.tracking.threshold": 0.02, "visualize.show": False})
    overrides.update(extra)
    return make_spec("inference", overrides)


def test_onnx_inference_matches_pytorch_inference(tmp_path, converted):
    from sparse4d.engine.inference import run_inference

    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "export"))
    overrides.update({"export.checkpoint": str(checkpoint), "export.onnx_file": "model.onnx", "export.on_cpu": True,
                      "export.input_width": WIDTH, "export.input_height": HEIGHT})
    onnx_path = run_export(make_spec("export", overrides))

    torch_results = json.loads(run_inference(inference_spec(tmp_path, converted, checkpoint, "torch")).read_text())["results"]
    onnx_results = json.loads(run_inference(inference_spec(tmp_path, converted, onnx_path, "onnx")).read_text())["results"]
    assert onnx_results.keys() == torch_results.keys() and len(onnx_results) == 4
    tracked = 0
    for token, expected in torch_results.items():
        got = onnx_results[token]
        assert len(got) == len(expected)
        by_score = lambda boxes: sorted(boxes, key=lambda b: -b["detection_score"])  # noqa: E731
        for g, e in zip(by_score(got), by_score(expected)):
            assert g["detection_score"] == pytest.approx(e["detection_score"], abs=1e-3)
            assert g["translation"] == pytest.approx(e["translation"], abs=1e-3)
            assert g["size"] == pytest.approx(e["size"], abs=1e-3)
            assert g["detection_name"] == e["detection_name"]
            assert g["tracking_id"] == e["tracking_id"]
            tracked += isinstance(g["tracking_id"], int)
    assert tracked > 0
    assert (tmp_path / "onnx" / "sparse4d_pred_nvschema.jsonl").is_file()


def test_onnx_inference_refuses_a_mismatched_input_size(tmp_path, converted):
    from sparse4d.engine.inference import run_inference

    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "export"))
    overrides.update({"export.checkpoint": str(checkpoint), "export.onnx_file": "small.onnx", "export.on_cpu": True,
                      "export.input_width": 64, "export.input_height": 32})
    onnx_path = run_export(make_spec("export", overrides))
    with pytest.raises(SpecError) as info:
        run_inference(inference_spec(tmp_path, converted, onnx_path, "onnx"))
    assert info.value.key == "dataset.augmentation.final_dim"
