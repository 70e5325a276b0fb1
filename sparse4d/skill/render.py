"""Render the generated parts of SKILL.md and the whole references/skill_info.yaml.

`render_generated_files(repo_root)` returns {relative path: full new content}; `runner generate`
writes them and `runner generate --check` compares them, so the tables in SKILL.md cannot drift from
the code that applies them. In SKILL.md only the text between
``<!-- BEGIN GENERATED: <name> -->`` and ``<!-- END GENERATED: <name> -->`` is replaced; everything else
is hand-written and kept byte for byte.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparse4d.errors import InputFileError, SpecError

from .data_sources import ACTIONS, DATA_SOURCES, SPLITS, render_overrides
from .parameters import IMPORTANT_PARAMETERS, MULTI_GPU_PARAMETERS, Parameter
from .schema_keys import MISSING, load_schema, load_template, schema_default, schema_field
from .skill_info import render_skill_info
from .spec_params import FUNCTIONS, SPEC_PARAMS

SKILL_MD = "skills/sparse4d/SKILL.md"
SKILL_INFO = "references/skill_info.yaml"
MARKERS = ("data-sources", "override-examples", "important-parameters", "multi-gpu", "spec-params")

# Symbolic roots of the override examples (the seed's names); `runner plan` prints real values.
EXAMPLE_ROOTS = {"train_datasets": "{S3_TRAIN}", "eval_dataset": "{S3_EVAL}"}
EXAMPLE_CONVERTED = "{CONVERTED}"
EXAMPLE_SCENE = "{CONVERTED_SCENE}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_data_sources_table() -> str:
    lines = ["| Action | Spec key | Source | Value | Kind |", "|---|---|---|---|---|"]
    for row in DATA_SOURCES:
        source = row.role if row.fallback_role is None else f"{row.role} (else {row.fallback_role})"
        lines.append(f"| {row.action} | `{row.spec_key}` | {source} | `{_cell(row.pattern())}` | {row.kind} |")
    return "\n".join(lines)


def _python_value(value: str) -> str:
    return f'f"{value}"' if "{" in value else json.dumps(value)


def render_override_examples() -> str:
    lines = [
        "```python",
        'S3_TRAIN = "s3://bucket/data/train"    # --train-root',
        'S3_EVAL = "s3://bucket/data/eval"      # --eval-root (inference reads its test/ split)',
        'CONVERTED = "s3://bucket/results/<dataset_convert_job_id>"  # or <jobs root>/<id>/results',
        'CONVERTED_SCENE = "<scene-from-converter>"  # e.g. "subsetscene+bev-sensor-random-0", read from disk',
        "```",
    ]
    scenes = {split: EXAMPLE_SCENE for split in SPLITS}
    for action in ACTIONS:
        values = render_overrides(action, EXAMPLE_ROOTS, EXAMPLE_CONVERTED, scenes)
        lines += ["", f"{action} (mandatory data sources):", "```python", "{"]
        lines += [f'    "{key}": {_python_value(value)},' for key, value in values.items()]
        lines += ["}", "```"]
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _describe_default(repo_root: Path, param: Parameter) -> str:
    """``Default `x`. Options: a, b.`` from the packaged schema, else the packaged spec template."""
    schema = load_schema(repo_root, param.action)
    default: Any = MISSING
    options: list[Any] | None = None
    if schema is not None:
        default = schema_default(schema, param.key)
        node = schema_field(schema, param.key)
        options = node.get("enum") or (node.get("items") or {}).get("enum")
    if default is MISSING:
        # Fallback while schemas/ is not generated: the packaged template has the same defaults.
        template = load_template(repo_root, param.action)
        default = template
        for part in param.key.split("."):
            default = default.get(part, MISSING) if isinstance(default, dict) else MISSING
    text = "" if default is MISSING else f" Default `{_format_value(default)}`."
    if options:
        text += " Options: " + ", ".join(f"`{_format_value(o)}`" for o in options) + "."
    return text


def render_important_parameters(repo_root: Path) -> str:
    lines = []
    for param in IMPORTANT_PARAMETERS:
        note = f" {param.note}" if param.note else ""
        lines.append(f"- `{param.key}`: {param.meaning}{_describe_default(repo_root, param)}{note}")
    return "\n".join(lines)


def render_multi_gpu(repo_root: Path) -> str:
    lines = ["| Spec key | Description | Default |", "|---|---|---|"]
    for param in MULTI_GPU_PARAMETERS:
        default = _describe_default(repo_root, param).removeprefix(" Default ").removesuffix(".")
        lines.append(f"| `{param.key}` | {param.meaning} | {default or '-'} |")
    return "\n".join(lines)


def render_spec_params_table() -> str:
    lines = ["| Action | Spec key | Inferred by | How |", "|---|---|---|---|"]
    for action, table in SPEC_PARAMS.items():
        for key, fn in table.items():
            lines.append(f"| {action} | `{key}` | `{fn}` | {_cell(FUNCTIONS[fn].how)} |")
    return "\n".join(lines)


def _sections(repo_root: Path) -> dict[str, Callable[[], str]]:
    return {
        "data-sources": render_data_sources_table,
        "override-examples": render_override_examples,
        "important-parameters": lambda: render_important_parameters(repo_root),
        "multi-gpu": lambda: render_multi_gpu(repo_root),
        "spec-params": render_spec_params_table,
    }


def fill_markers(text: str, sections: dict[str, Callable[[], str]], *, path: str = SKILL_MD) -> str:
    """Replace the body of every generated block; each marker must appear exactly once."""
    for name, render in sections.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n)(.*?)(<!-- END GENERATED: {re.escape(name)} -->)",
            re.DOTALL,
        )
        found = pattern.findall(text)
        if len(found) != 1:
            raise SpecError(f"{path} must contain the generated block {name!r} exactly once (found {len(found)})",
                            hint=f"restore <!-- BEGIN GENERATED: {name} --> ... <!-- END GENERATED: {name} -->")
        body = render().rstrip("\n") + "\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    return text


def render_generated_files(repo_root: Path) -> dict[str, str]:
    """{"skills/sparse4d/SKILL.md": ..., "references/skill_info.yaml": ...} with generated parts filled."""
    repo_root = Path(repo_root)
    skill_md = repo_root / SKILL_MD
    try:
        current = skill_md.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputFileError(f"{skill_md} cannot be read ({exc})", hint="restore it from git") from None
    return {
        SKILL_MD: fill_markers(current, _sections(repo_root)),
        SKILL_INFO: render_skill_info(),
    }

