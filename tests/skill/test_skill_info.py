"""references/skill_info.yaml: valid against its schema, TAO's keys, every spec key real."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sparse4d.skill.data_sources import ACTIONS, DATA_SOURCES
from sparse4d.skill.parameters import shorthand_action
from sparse4d.skill.schema_keys import key_in_schema, load_schema

REPO = Path(__file__).resolve().parents[2]
INFO = yaml.safe_load((REPO / "references" / "skill_info.yaml").read_text(encoding="utf-8"))
SCHEMA = json.loads((REPO / "references" / "skill_info.schema.json").read_text(encoding="utf-8"))
TAO_DIR = Path("/work/shared/reference/tao-skill-bank-sparse4d")
TAO_KEYS = ("name", "network_arch", "automl_enabled", "data_format", "actions", "data_sources", "spec_params",
            "spec_shorthand_keys", "spec_templates")


def test_valid_against_its_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(INFO)


def test_schema_rejects_a_wrong_file() -> None:
    bad = json.loads(json.dumps(INFO))
    bad["data_sources"]["train"]["dataset.data_root"]["source"] = "training_data"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    bad = json.loads(json.dumps(INFO))
    bad["actions"]["train"]["command"] = "docker run tao sparse4d train"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_tao_keys_and_local_commands() -> None:
    for key in TAO_KEYS:
        assert key in INFO
    assert INFO["automl_enabled"] is True and INFO["execution"] == "local"
    assert set(INFO["actions"]) == set(ACTIONS)
    for action, spec in INFO["actions"].items():
        assert spec["command"] == f"sparse4d {action} -e {{config_path}}"
        assert "container_image" not in spec


def _spec_keys(action: str) -> set[str]:
    keys = set(INFO["actions"][action]["inputs"]) | set(INFO["actions"][action]["outputs"])
    keys |= set(INFO["data_sources"].get(action, {})) | set(INFO["spec_params"].get(action, {}))
    return keys


@pytest.mark.parametrize("action", ACTIONS)
def test_every_key_exists_in_the_action_schema(action: str) -> None:
    schema = load_schema(REPO, action)
    if schema is None:
        pytest.skip(f"schemas/{action}.schema.json not generated yet: run `runner generate`")
    missing = sorted(k for k in _spec_keys(action) if not key_in_schema(schema, k))
    assert missing == []


def test_shorthand_keys_exist() -> None:
    for short, key in INFO["spec_shorthand_keys"].items():
        schema = load_schema(REPO, shorthand_action(key))
        if schema is None:
            pytest.skip("schemas/ not generated yet")
        assert key_in_schema(schema, key), (short, key)


@pytest.mark.parametrize("action", ACTIONS)
def test_keys_also_exist_in_tao_schemas(action: str) -> None:
    path = TAO_DIR / f"{action}.schema.json"
    if not path.is_file():
        pytest.skip("TAO reference schemas not available on this machine")
    tao = json.loads(path.read_text())
    missing = sorted(k for k in _spec_keys(action) if not key_in_schema(tao, k))
    assert missing == []


def test_data_source_roles_match_tao() -> None:
    path = TAO_DIR / "skill_info.yaml"
    if not path.is_file():
        pytest.skip("TAO reference skill_info.yaml not available on this machine")
    tao = yaml.safe_load(path.read_text())["data_sources"]
    ours = {a: {k: v["source"] for k, v in keys.items()} for a, keys in INFO["data_sources"].items()}
    assert ours == {a: {k: v["source"] for k, v in keys.items()} for a, keys in tao.items()}
    assert INFO["spec_shorthand_keys"] == yaml.safe_load(path.read_text())["spec_shorthand_keys"]


def test_paths_exist_and_match_the_table() -> None:
    for action, template in INFO["spec_templates"].items():
        assert (REPO / template).is_file(), template
        assert (REPO / INFO["actions"][action]["schema"]).is_file()
    assert (REPO / INFO["skill"]).is_file()
    rows = {(r.action, r.spec_key) for r in DATA_SOURCES}
    assert rows == {(a, k) for a, keys in INFO["data_sources"].items() for k in keys}
