"""`sparse4d export` / `sparse4d quantize` through the trainer CLI: a written file, or one clear error."""
from __future__ import annotations

import yaml
from click.testing import CliRunner

from sparse4d.cli.trainer import cli
from sparse4d.errors import EXIT_INVALID_SPEC

from .conftest import HEIGHT, build_checkpoint, data_overrides, tiny_model_overrides


def spec_file(tmp_path, overrides):
    path = tmp_path / "spec.yaml"
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(nested))
    return path


def test_cli_export_writes_the_onnx_file_and_names_bad_keys(tmp_path, converted):
    checkpoint, _, _ = build_checkpoint(tmp_path, converted)
    overrides = tiny_model_overrides()
    overrides.update(data_overrides(converted, tmp_path / "export"))
    overrides.update({"export.checkpoint": str(checkpoint), "export.onnx_file": "model.onnx", "export.on_cpu": True,
                      "export.input_width": 64, "export.input_height": HEIGHT})
    path = spec_file(tmp_path, overrides)
    result = CliRunner().invoke(cli, ["export", "-e", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "export" / "model.onnx").is_file()

    result = CliRunner().invoke(cli, ["export", "-e", str(path), "export.input_width=80", "export.onnx_file=bad.onnx"])
    assert result.exit_code == EXIT_INVALID_SPEC
    assert "export.input_width" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "export" / "bad.onnx").exists()

    quantized = tmp_path / "quantized_model_torchao.pth"
    quantized.write_bytes(checkpoint.read_bytes())
    result = CliRunner().invoke(cli, ["export", "-e", str(path), f"export.checkpoint={quantized}"])
    assert result.exit_code == EXIT_INVALID_SPEC and "export.checkpoint" in result.output
