"""SKILL.md: valid Agent Skills frontmatter, every seed section, real key paths, no drift from the tables."""
from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import skills_ref

from sparse4d.skill import data_sources as ds
from sparse4d.skill import render
from sparse4d.skill.data_sources import CONVERT_REQUIRED_MESSAGE, DataSource
from sparse4d.skill.policy import NOT_RUNNABLE_REPORT
from sparse4d.skill.render import MARKERS, render_generated_files
from sparse4d.skill.schema_keys import key_in_schema, load_schema
from sparse4d.skill.triggers import TRIGGER_PHRASES

REPO = Path(__file__).resolve().parents[2]
SKILL_DIR = REPO / "skills" / "sparse4d"
SKILL_MD = SKILL_DIR / "SKILL.md"
ACTIONS = ("dataset_convert", "train", "evaluate", "export", "inference", "quantize")
SEED_SECTIONS = (
    "Dataclass Schemas", "Train Action Policy", "Training Requirements", "Per-Action Dataset Requirements",
    "Typical Spec Overrides", "Eval Dataset", "Important Parameters", "Multi-GPU / Multi-Node", "Hardware",
    "Error Patterns", "Spec Param / Parent Model Inference",
)


def _body() -> str:
    return SKILL_MD.read_text(encoding="utf-8").split("---", 2)[2]


def test_skills_ref_validation_passes() -> None:
    assert skills_ref.validate(SKILL_DIR) == []


def test_skills_ref_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "not-sparse4d"
    broken.mkdir()
    shutil.copy(SKILL_MD, broken / "SKILL.md")
    assert any("must match skill name" in e for e in skills_ref.validate(broken))


def test_frontmatter_fields() -> None:
    props = skills_ref.read_properties(SKILL_DIR)
    assert props.name == "sparse4d" == SKILL_DIR.name
    assert len(props.description) <= 1024
    for phrase in TRIGGER_PHRASES:
        assert f'"{phrase}"' in props.description
    assert props.license and props.compatibility and len(props.compatibility) <= 500
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert props.metadata == {"tao_skill": "tao-train-sparse4d", "version": version,
                              "author": props.metadata["author"]}
    assert props.metadata["author"]


def test_body_shape_and_sections() -> None:
    body = _body()
    assert len(body.splitlines()) < 500
    headings = re.findall(r"^## (.+)$", body, flags=re.MULTILINE)
    for section in ("Instructions", "Examples", *SEED_SECTIONS):
        assert section in headings, section
    assert "relative to the plugin root" in body
    assert NOT_RUNNABLE_REPORT in body
    assert CONVERT_REQUIRED_MESSAGE.removesuffix(".") in body.replace("\n  ", " ")
    for alias in ("val_mAP", "img_bbox_NuScenes/mAP", "`mAP`"):
        assert alias in body
    for marker in MARKERS:
        assert body.count(f"<!-- BEGIN GENERATED: {marker} -->") == 1
        assert body.count(f"<!-- END GENERATED: {marker} -->") == 1


def test_every_spec_key_named_exists_in_a_schema() -> None:
    schemas = {a: load_schema(REPO, a) for a in ACTIONS}
    if any(s is None for s in schemas.values()):
        pytest.skip("schemas/ not generated yet: run `runner generate`")
    keys = set()
    for token in re.findall(r"`([^`\s]+)`", _body()):
        key = token.split("=", 1)[0]
        if re.fullmatch(r"(model|dataset|train|evaluate|inference|export|quantize|aicity)(\.[A-Za-z_0-9]+)+", key):
            keys.add(key)
    assert len(keys) > 30
    missing = [k for k in sorted(keys) if not any(key_in_schema(s, k) for s in schemas.values())]
    assert missing == []


def test_local_paths_named_exist() -> None:
    for token in set(re.findall(r"`((?:references|schemas|runners|skills)/[^`<>{}\s]+)`", _body())):
        assert (REPO / token).exists(), token


def test_generated_files_are_current() -> None:
    files = render_generated_files(REPO)
    assert set(files) == {"skills/sparse4d/SKILL.md", "references/skill_info.yaml"}
    for rel, text in files.items():
        assert (REPO / rel).read_text(encoding="utf-8") == text, f"{rel} is stale: run `runner generate`"


def test_render_is_deterministic_and_idempotent() -> None:
    first = render_generated_files(REPO)
    assert render_generated_files(REPO) == first


def _copy_root(tmp_path: Path) -> Path:
    root = tmp_path / "plugin"
    (root / "skills" / "sparse4d").mkdir(parents=True)
    shutil.copy(SKILL_MD, root / "skills" / "sparse4d" / "SKILL.md")
    for folder in ("schemas", "references"):
        if (REPO / folder).is_dir():
            shutil.copytree(REPO / folder, root / folder)
    return root


def test_hand_edit_of_the_generated_table_is_caught(tmp_path: Path) -> None:
    root = _copy_root(tmp_path)
    path = root / "skills" / "sparse4d" / "SKILL.md"
    original = path.read_text(encoding="utf-8")
    edited = original.replace("`<eval_dataset>/val`", "`<eval_dataset>/validation`", 1)
    assert edited != original
    path.write_text(edited, encoding="utf-8")
    regenerated = render_generated_files(root)["skills/sparse4d/SKILL.md"]
    assert regenerated != edited and regenerated == original


def test_changing_the_table_alone_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = DataSource("export", "dataset.data_root", "eval_dataset", "split_dir", "val", kind="folder")
    monkeypatch.setattr(ds, "DATA_SOURCES", ds.DATA_SOURCES + (extra,))
    monkeypatch.setattr(render, "DATA_SOURCES", ds.DATA_SOURCES)
    files = render_generated_files(REPO)
    assert files["skills/sparse4d/SKILL.md"] != SKILL_MD.read_text(encoding="utf-8")


def test_changed_schema_default_is_caught(tmp_path: Path) -> None:
    root = _copy_root(tmp_path)
    schema_path = root / "schemas" / "train.schema.json"
    if not schema_path.is_file():
        pytest.skip("schemas/ not generated yet")
    schema = json.loads(schema_path.read_text())
    schema["default"]["dataset"]["batch_size"] = 7
    schema_path.write_text(json.dumps(schema))
    text = render_generated_files(root)["skills/sparse4d/SKILL.md"]
    assert "- `dataset.batch_size`: Per-GPU batch size. Default `7`." in text


def test_missing_marker_is_a_clear_error(tmp_path: Path) -> None:
    root = _copy_root(tmp_path)
    path = root / "skills" / "sparse4d" / "SKILL.md"
    path.write_text(path.read_text().replace("<!-- END GENERATED: multi-gpu -->", ""), encoding="utf-8")
    with pytest.raises(Exception, match="multi-gpu"):
        render_generated_files(root)


def test_seed_override_examples_are_rendered_verbatim() -> None:
    body = _body()
    for line in (
        '"dataset.data_root": f"{S3_TRAIN}/train",',
        '"dataset.data_root": f"{S3_EVAL}/val",',
        '"dataset.data_root": f"{S3_EVAL}/test",',
        '"model.head.instance_bank.anchor": f"{CONVERTED}/anchor_init.npy",',
        '"dataset.val_dataset.ann_file": f"{CONVERTED}/val/{CONVERTED_SCENE}_infos_val.pkl",',
        '"dataset.quant_calibration_dataset.images_dir": f"{S3_TRAIN}",',
    ):
        assert line in body, line
