"""Plugin manifests: valid against schemas written from the public specs, one version, real paths."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import skills_ref
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
FILES = {
    "manifest.json": "package_manifest.schema.json",
    ".claude-plugin/plugin.json": "claude_plugin.schema.json",
    ".claude-plugin/marketplace.json": "claude_marketplace.schema.json",
    ".codex-plugin/plugin.json": "codex_plugin.schema.json",
}


def _load(rel: str) -> dict:
    return json.loads((REPO / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize(("rel", "schema"), FILES.items())
def test_manifest_matches_its_schema(rel: str, schema: str) -> None:
    spec = json.loads((SCHEMAS / schema).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(spec)
    jsonschema.Draft202012Validator(spec).validate(_load(rel))


@pytest.mark.parametrize(("rel", "schema", "mutate"), [
    (".claude-plugin/plugin.json", "claude_plugin.schema.json", lambda d: d.update(name="Sparse 4D")),
    (".claude-plugin/plugin.json", "claude_plugin.schema.json", lambda d: d.update(skills=["../elsewhere"])),
    (".claude-plugin/marketplace.json", "claude_marketplace.schema.json", lambda d: d.pop("owner")),
    (".codex-plugin/plugin.json", "codex_plugin.schema.json",
     lambda d: d["interface"].update(defaultPrompt=["a", "b", "c", "d"])),
    ("manifest.json", "package_manifest.schema.json", lambda d: d["actions"]["train"].pop("runner")),
])
def test_schemas_reject_broken_manifests(rel: str, schema: str, mutate) -> None:
    data = _load(rel)
    mutate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads((SCHEMAS / schema).read_text(encoding="utf-8")))


def test_one_version_everywhere() -> None:
    version = PYPROJECT["project"]["version"]
    market = _load(".claude-plugin/marketplace.json")
    found = {
        "manifest.json": _load("manifest.json")["version"],
        ".claude-plugin/plugin.json": _load(".claude-plugin/plugin.json")["version"],
        ".codex-plugin/plugin.json": _load(".codex-plugin/plugin.json")["version"],
        "marketplace metadata": market["metadata"]["version"],
        "marketplace entry": market["plugins"][0]["version"],
        "SKILL.md metadata": skills_ref.read_properties(REPO / "skills" / "sparse4d").metadata["version"],
    }
    assert set(found.values()) == {version}, found


def test_identity_is_consistent() -> None:
    manifests = [_load(rel) for rel in ("manifest.json", ".claude-plugin/plugin.json", ".codex-plugin/plugin.json")]
    manifests.append(_load(".claude-plugin/marketplace.json")["plugins"][0])
    for field in ("name", "repository", "license", "description"):
        assert len({m[field] for m in manifests}) == 1, field
    assert manifests[0]["license"] == PYPROJECT["project"]["license"]["text"]


def test_package_manifest_points_at_real_files() -> None:
    manifest = _load("manifest.json")
    info = yaml.safe_load((REPO / "references" / "skill_info.yaml").read_text(encoding="utf-8"))
    assert set(manifest["actions"]) == set(info["actions"])
    for action, spec in manifest["actions"].items():
        assert spec["command"] == info["actions"][action]["command"]
        for key in ("runner", "schema", "spec_template"):
            assert (REPO / spec[key]).is_file(), spec[key]
    for skill in manifest["skills"]:
        assert (REPO / skill["path"]).is_file() and (REPO / skill["skill_info"]).is_file()
        assert skills_ref.read_properties((REPO / skill["path"]).parent).name == skill["name"]
    assert manifest["entry_points"]["console_scripts"] == PYPROJECT["project"]["scripts"]
    for path in manifest["plugins"].values():
        assert (REPO / path).is_file()


def test_plugin_skill_paths_exist() -> None:
    for path in _load(".claude-plugin/plugin.json")["skills"]:
        assert (REPO / path / "SKILL.md").is_file()
    assert (REPO / _load(".codex-plugin/plugin.json")["skills"] / "sparse4d" / "SKILL.md").is_file()
    assert (REPO / _load(".claude-plugin/marketplace.json")["plugins"][0]["source"] / ".claude-plugin").is_dir()
