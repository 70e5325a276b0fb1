"""Read a spec file and `key=value` overrides into a validated action spec, with errors a user can act on.

Every failure becomes a `SpecIssue` naming the dotted key, the bad value, what is allowed and, for
unknown keys, the closest known key. Nothing here imports torch.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import InputFileError, SpecError
from .experiment import ACTIONS, SPEC_MODELS, ignored_sections

MAX_SPEC_BYTES = 5 * 1024 * 1024  # real specs are a few KB; larger files are refused, not parsed
MAX_YAML_ALIASES = 200  # defeats "billion laughs" alias bombs


@dataclass
class SpecIssue:
    key: str
    message: str
    hint: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"key": self.key, "message": self.message, "hint": self.hint}


@dataclass
class SpecReport:
    """Outcome of validating one spec: the parsed model (when valid), errors and warnings."""

    action: str
    spec: BaseModel | None = None
    errors: list[SpecIssue] = dc_field(default_factory=list)
    warnings: list[SpecIssue] = dc_field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "valid": self.valid,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
        }


_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
# An alias is `*name` after whitespace, a flow separator or a block indicator.
_ALIAS = re.compile(r"(?:^|[\s\[\{,:-])\*[^\s,\]\}]+", re.M)


class _SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loading (the C parser when available) that reads `5e-5` as a float, not a string."""


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT, list("-+0123456789"))


def parse_yaml_text(text: str, source: str) -> Any:
    if len(_ALIAS.findall(text)) > MAX_YAML_ALIASES:
        raise SpecError(
            f"more than {MAX_YAML_ALIASES} YAML aliases",
            key="<file>",
            hint="anchors/aliases this many look like a YAML bomb; write the values out",
        )
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"malformed YAML at {where}: {exc.problem}", key="<file>", hint=f"fix the syntax in {source}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", key="<file>", hint=f"fix the syntax in {source}") from None
    except RecursionError:
        raise SpecError("YAML nesting is too deep", key="<file>", hint=f"simplify {source}") from None


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a spec YAML file into a mapping, refusing files that are not small UTF-8 YAML mappings."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"spec file {p} does not exist", key="<file>", hint="pass the path of a YAML spec (see references/spec_template_<action>.yaml)")
    size = p.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {p} is {size / 1e6:.1f} MB; specs are at most {MAX_SPEC_BYTES // 1024 // 1024} MB", key="<file>", hint="pass the YAML spec, not a data file")
    raw = p.read_bytes()
    if b"\x00" in raw:
        raise SpecError(f"spec file {p} is binary, not YAML", key="<file>", hint="pass the YAML spec file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file {p} is not UTF-8 text (byte {exc.start})", key="<file>", hint="save the spec as UTF-8 YAML") from None
    data = parse_yaml_text(text, str(p))
    if data is None:
        raise SpecError(f"spec file {p} is empty", key="<file>", hint="start from references/spec_template_<action>.yaml")
    if not isinstance(data, dict):
        raise SpecError(f"spec file {p} holds a {type(data).__name__}, not a mapping of keys", key="<file>", hint="the top level must be `key: value` pairs")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as a YAML scalar/flow value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {text!r} is not key=value", key=key or "<override>", hint="write overrides as dotted.key=value, e.g. train.num_epochs=5")
    return key, parse_yaml_text(value, f"override {key}") if value.strip() else ""


def apply_overrides(spec: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``spec`` with dotted-key overrides set (intermediate mappings are created)."""
    import copy

    out = copy.deepcopy(spec)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"cannot set {key}: {'.'.join(parts[: i + 1])} is a {type(child).__name__}, not a section", key=key)
            node = child
        node[parts[-1]] = value
    return out


def check_action(action: str) -> None:
    if action not in SPEC_MODELS:
        close = difflib.get_close_matches(action, ACTIONS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"actions: {', '.join(ACTIONS)}"
        raise SpecError(f"unknown action {action!r}", key="<action>", hint=hint)


def validate_mapping(action: str, data: dict[str, Any]) -> SpecReport:
    """Schema-level validation of a spec mapping (types, enums, bounds, unknown keys)."""
    check_action(action)
    model = SPEC_MODELS[action]
    report = SpecReport(action)
    data = dict(data)
    for name in ignored_sections(action, data):
        report.warnings.append(SpecIssue(name, f"section is not used by {action} and is ignored", "kept for TAO compatibility"))
        data.pop(name)
    try:
        report.spec = model.model_validate(data)
    except ValidationError as exc:
        report.errors.extend(_issue_from_pydantic(model, err) for err in exc.errors(include_url=False))
    except RecursionError:
        report.errors.append(SpecIssue("<file>", "spec nesting is too deep"))
    return report


def _issue_from_pydantic(model: type[BaseModel], err: dict[str, Any]) -> SpecIssue:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "<root>"
    value = err.get("input")
    kind = err["type"]
    shown = _short(value)
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"did you mean {'.'.join(loc[:-1] + [close[0]])}?" if close else (f"known keys here: {', '.join(sorted(known))}" if known else None)
        return SpecIssue(key, "unknown key", hint)
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return SpecIssue(key, f"{shown} is not allowed", f"allowed: {ctx.get('expected')}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return SpecIssue(key, f"{shown} is out of range", err["msg"].lower())
    if kind in ("too_short", "too_long"):
        return SpecIssue(key, f"{shown} has the wrong length", err["msg"])
    if kind == "model_type" or kind == "dict_type":
        return SpecIssue(key, f"expected a mapping (section), got {type(value).__name__} {shown}", "write nested keys under this section")
    return SpecIssue(key, f"{shown}: {err['msg']}", None)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the nested section at ``path`` (empty when the path is not a section)."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    return list(getattr(current, "model_fields", {}).keys())
