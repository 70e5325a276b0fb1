"""`runner generate [--check]`: write every file derived from the config models, deterministically.

Outputs: schemas/<action>.schema.json, schemas/manifest.json, references/spec_template_<action>.yaml,
runners/<action>.py, and the generated sections of skills/sparse4d/SKILL.md + references/skill_info.yaml
(rendered by sparse4d.skill.render). `--check` writes nothing and lists the stale files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..config.experiment import SPEC_MODELS
from .schema import action_schema, manifest

TEMPLATES = Path(__file__).with_name("templates")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def dump_json(data: Any) -> str:
    """Strict, sorted, stable JSON (NaN/Infinity refused)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"


def _yaml_value(value: Any) -> str:
    if isinstance(value, (dict, list)) and value:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=True).strip()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined, keep_trailing_newline=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["yaml_value"] = _yaml_value
    return env


def render_template(action: str, schema: dict[str, Any]) -> str:
    text = _environment().get_template("spec_template.yaml.j2").render(action=action, schema=schema)
    return text.rstrip() + "\n"


def render_runner(action: str) -> str:
    try:
        from ..skill.data_sources import data_source_keys
    except ImportError:  # skill layer not present: runners still validate/launch
        keys: list[str] = []
    else:
        keys = sorted(data_source_keys(action))
    return _environment().get_template("runner.py.j2").render(action=action, data_source_keys=repr(keys)).rstrip() + "\n"


def generated_files(root: Path) -> dict[str, str]:
    """Relative path -> full content for every generated file."""
    files: dict[str, str] = {}
    for action in SPEC_MODELS:
        schema = action_schema(action)
        files[f"schemas/{action}.schema.json"] = dump_json(schema)
        files[f"references/spec_template_{action}.yaml"] = render_template(action, schema)
        files[f"runners/{action}.py"] = render_runner(action)
    files["schemas/manifest.json"] = dump_json(manifest())
    try:
        from ..skill.render import render_generated_files
    except ImportError:
        pass
    else:
        files.update(render_generated_files(root))
    return files


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    if path.suffix == ".py" and path.parent.name == "runners":
        tmp.chmod(0o755)
    os.replace(tmp, path)


def stale_files(root: Path) -> list[str]:
    out = []
    for rel, text in sorted(generated_files(root).items()):
        p = root / rel
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            out.append(rel)
    return out


def generate(root: Path) -> list[str]:
    """Write generated files that changed; returns their relative paths."""
    changed = []
    for rel, text in sorted(generated_files(root).items()):
        p = root / rel
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            write_atomic(p, text)
            changed.append(rel)
    return changed
