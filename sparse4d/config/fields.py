"""Field metadata shared by every config model.

The pydantic models are the single source of truth: besides type, default and bounds, each field can
carry the AutoML and TAO metadata that `runner generate` writes into `schemas/<action>.schema.json`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Automl:
    """How AutoML may search a field (TAO names: valid_min/valid_max/option_weights/math_cond/depends_on)."""

    enabled: bool = True
    valid_min: float | None = None
    valid_max: float | None = None
    log_scale: bool = False
    option_weights: tuple[float, ...] | None = None
    math_cond: str | None = None  # e.g. "<= train.num_epochs": the sampled value must satisfy it
    depends_on: tuple[str, ...] = ()  # keys that must be searched or set with this one
    default_searched: bool = False  # listed in the action's automl_default_parameters

    def to_schema(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, (), False) or k == "enabled"}
        if "option_weights" in out:
            out["option_weights"] = list(out["option_weights"])
        if "depends_on" in out:
            out["depends_on"] = list(out["depends_on"])
        return out


# AutoML may not touch these (structural, paths, hardware): marked disabled explicitly.
AUTOML_OFF = Automl(enabled=False)


def field(
    default: Any,
    description: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    automl: Automl | None = None,
    popular: bool = False,
    tao_type: str | None = None,
) -> Any:
    """A config field with its description, bounds and the TAO/AutoML metadata for the schema."""
    extra: dict[str, Any] = {}
    if automl is not None:
        extra["automl"] = automl
    if popular:
        extra["popular"] = True
    if tao_type:
        extra["tao_type"] = tao_type
    kwargs: dict[str, Any] = {}
    if isinstance(default, (list, dict)):
        kwargs["default_factory"] = _copier(default)
    else:
        kwargs["default"] = default
    return Field(
        description=description,
        ge=ge,
        le=le,
        gt=gt,
        min_length=min_length,
        max_length=max_length,
        pattern=pattern,
        json_schema_extra=extra or None,  # type: ignore[arg-type]
        **kwargs,
    )


def _copier(value: Any):
    import copy

    return lambda: copy.deepcopy(value)


def section(model: type[BaseModel], description: str, *, automl: Automl | None = None) -> Any:
    """A nested config section whose default is the section model's own defaults."""
    extra: dict[str, Any] = {}
    if automl is not None:
        extra["automl"] = automl
    return Field(default_factory=model, description=description, json_schema_extra=extra or None)  # type: ignore[arg-type]


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
