"""Typed spec models for the six Sparse4D actions (the single source of truth) and their validation."""
from __future__ import annotations

from typing import Any

from .experiment import ACTIONS, SPEC_MODELS
from .loading import SpecIssue, SpecReport, apply_overrides, check_action, read_spec_file, validate_mapping
from .semantic import check_semantics, exit_code_for

__all__ = ["ACTIONS", "SPEC_MODELS", "SpecIssue", "SpecReport", "validate_spec", "load_spec", "read_spec_file", "apply_overrides", "exit_code_for"]


def validate_spec(action: str, data: dict[str, Any], *, overrides: list[str] | dict[str, Any] | None = None, for_launch: bool = False, check_files: bool = True) -> SpecReport:
    """Schema + semantic validation of a spec mapping (overrides applied first)."""
    check_action(action)
    if overrides:
        data = apply_overrides(data, overrides)
    report = validate_mapping(action, data)
    return check_semantics(report, for_launch=for_launch, check_files=check_files)


def load_spec(action: str, path: str, overrides: list[str] | None = None, *, for_launch: bool = False):
    """Read, validate and return the typed spec, or raise SpecError/InputFileError with every problem."""
    from ..errors import InputFileError, SpecError

    report = validate_spec(action, read_spec_file(path), overrides=overrides, for_launch=for_launch)
    if not report.valid:
        lines = "; ".join(f"{e.key}: {e.message}" + (f" ({e.hint})" if e.hint else "") for e in report.errors)
        cls = InputFileError if exit_code_for(report) == 4 else SpecError
        raise cls(f"invalid {action} spec {path}: {lines}")
    return report.spec, report.warnings
