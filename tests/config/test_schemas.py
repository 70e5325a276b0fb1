"""Generated schemas, manifest and templates: valid, strict, deterministic and in sync with the models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from sparse4d.codegen import generate as gen
from sparse4d.config import ACTIONS, read_spec_file, validate_spec

ROOT = Path(__file__).resolve().parents[2]


def _strict_load(path: Path):
    def refuse(token: str):
        raise ValueError(f"non-strict JSON constant {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("action", ACTIONS)
def test_schema_is_valid_strict_draft_2020_12(action: str) -> None:
    schema = _strict_load(ROOT / "schemas" / f"{action}.schema.json")
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for key in ("automl_default_parameters", "automl_disabled_parameters", "popular", "x_tao_schema"):
        assert key in schema
    Draft202012Validator(schema).validate(schema["default"])


@pytest.mark.parametrize("action", ACTIONS)
def test_template_validates_against_schema_and_models(action: str) -> None:
    schema = _strict_load(ROOT / "schemas" / f"{action}.schema.json")
    template = read_spec_file(ROOT / "references" / f"spec_template_{action}.yaml")
    Draft202012Validator(schema).validate(template)
    report = validate_spec(action, template, check_files=False)
    schema_errors = [e for e in report.errors if "???" not in e.message and e.key != "model.head.instance_bank.anchor"]
    assert schema_errors == []
    assert template == schema["default"]


def test_manifest_lists_every_action_with_tao_fields() -> None:
    manifest = _strict_load(ROOT / "schemas" / "manifest.json")
    assert sorted(manifest["actions"]) == sorted(ACTIONS)
    for action, entry in manifest["actions"].items():
        assert set(entry) == {"automl_default_parameters", "automl_disabled_parameters", "core_module", "path", "popular", "schema_action", "spec_template"}
        assert (ROOT / entry["path"]).is_file() and (ROOT / entry["spec_template"]).is_file()
    assert manifest["actions"]["train"]["automl_default_parameters"]
    assert manifest["actions"]["export"]["automl_default_parameters"] == []


def test_train_search_space_is_real() -> None:
    schema = _strict_load(ROOT / "schemas" / "train.schema.json")
    lr = schema["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["automl_enabled"] and lr["valid_min"] == 1e-5 and lr["valid_max"] == 4e-4 and lr["x-automl-log-scale"]
    assert {"train.optim.lr", "train.optim.weight_decay", "train.optim.grad_clip.max_norm", "train.optim.paramwise_cfg.custom_keys.img_backbone.lr_mult"} <= set(schema["automl_default_parameters"])


def test_generate_is_deterministic_and_check_is_clean() -> None:
    first = gen.generated_files(ROOT)
    second = gen.generated_files(ROOT)
    assert first == second
    assert gen.stale_files(ROOT) == []


def test_check_fails_after_a_model_field_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse4d.config.train import TrainConfig

    for rel in gen.generated_files(ROOT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel) if (ROOT / rel).exists() else None
    assert gen.stale_files(tmp_path) == []
    monkeypatch.setattr(TrainConfig.model_fields["num_epochs"], "default", 11)
    TrainConfig.model_rebuild(force=True)
    try:
        stale = gen.stale_files(tmp_path)
    finally:
        monkeypatch.undo()
        TrainConfig.model_rebuild(force=True)
    assert "schemas/train.schema.json" in stale and "references/spec_template_train.yaml" in stale
    assert "schemas/export.schema.json" not in stale


def test_check_cli_names_stale_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparse4d.cli.runner import cli

    for rel in gen.generated_files(ROOT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).exists():
            shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "schemas" / "export.schema.json").write_text("{}\n")
    result = CliRunner().invoke(cli, ["generate", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "schemas/export.schema.json" in result.output


def test_templates_have_comments_and_parse() -> None:
    text = (ROOT / "references" / "spec_template_train.yaml").read_text()
    assert "  lr: 5.0e-05  # Learning rate." in text
    assert isinstance(yaml.safe_load(text), dict)
