"""Config models -> `schemas/<action>.schema.json` (JSON Schema Draft 2020-12 plus TAO metadata keys).

Standard keywords (type, properties, enum, minimum, ...) make the file usable by any JSON Schema
validator; TAO's keys (`automl_default_parameters`, `automl_disabled_parameters`, `popular`,
`x_tao_schema`, per-property `automl_enabled`, `valid_min`, `valid_max`, `option_weights`, `math_cond`,
`depends_on`, `popular`) keep TAO-aware tools working. TAO's own type names sit under `x-tao-type`.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..config.experiment import SPEC_MODELS, TAO_SHARED_SECTIONS
from ..config.fields import Automl

JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_VERSION = 1
# Actions where tuning means something; others get an empty automl_default_parameters.
TUNABLE_ACTIONS = ("train",)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) != len(get_args(tp)):
            return args[0], True
    return tp, False


def _type_schema(tp: Any) -> tuple[dict[str, Any], str]:
    """JSON Schema keywords and TAO type name for a (non-model) annotation."""
    tp, nullable = _strip_optional(tp)
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        tao = "ordered_int" if all(isinstance(v, int) for v in values) else "categorical"
        out: dict[str, Any] = {"enum": values + ([None] if nullable else [])}
        return out, tao
    if tp is bool:
        base, tao = {"type": "boolean"}, "bool"
    elif tp is int:
        base, tao = {"type": "integer"}, "int"
    elif tp is float:
        base, tao = {"type": "number"}, "float"
    elif tp is str:
        base, tao = {"type": "string"}, "string"
    elif origin is list:
        (item,) = get_args(tp)
        item_schema, _ = _type_schema(item)
        base, tao = {"type": "array", "items": item_schema}, "list"
    elif origin is dict:
        _, value = get_args(tp)
        value_schema, _ = ({}, "") if value is Any else _type_schema(value)
        base, tao = {"type": "object", "additionalProperties": value_schema or True}, "collection"
    else:
        raise TypeError(f"no JSON Schema mapping for {tp!r}")
    if nullable:
        base["type"] = [base["type"], "null"]
    return base, tao


def _constraints(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            out["minimum"] = meta.ge
        elif isinstance(meta, annotated_types.Le):
            out["maximum"] = meta.le
        elif isinstance(meta, annotated_types.Gt):
            out["exclusiveMinimum"] = meta.gt
        elif isinstance(meta, annotated_types.MinLen):
            out["minItems"] = meta.min_length
        elif isinstance(meta, annotated_types.MaxLen):
            out["maxItems"] = meta.max_length
        elif hasattr(meta, "pattern") and meta.pattern:
            out["pattern"] = meta.pattern
    return out


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _automl_keys(automl: Automl | None) -> dict[str, Any]:
    if automl is None:
        return {}
    if not automl.enabled:
        return {"automl_enabled": False}
    out: dict[str, Any] = {"automl_enabled": True}
    for key in ("valid_min", "valid_max", "math_cond"):
        value = getattr(automl, key)
        if value is not None:
            out[key] = value
    if automl.option_weights:
        out["option_weights"] = list(automl.option_weights)
    if automl.depends_on:
        out["depends_on"] = list(automl.depends_on)
    if automl.log_scale:
        out["x-automl-log-scale"] = True
    return out


def _default_of(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def field_schema(info: FieldInfo) -> dict[str, Any]:
    """Schema of one field: a nested section (object) or a leaf."""
    tp = info.annotation
    extra = _extra(info)
    node: dict[str, Any]
    if _is_model(tp):
        node = model_schema(tp)
    else:
        node, tao = _type_schema(tp)
        node.update(_constraints(info))
        node["x-tao-type"] = extra.get("tao_type", tao)
    node["default"] = _default_of(info)
    if info.description:
        node["description"] = info.description
    node.update(_automl_keys(extra.get("automl")))
    if extra.get("popular"):
        node["popular"] = True
    return node


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    props = {name: field_schema(info) for name, info in model.model_fields.items()}
    return {"type": "object", "additionalProperties": False, "properties": props, "x-tao-type": "collection"}


def iter_leaves(model: type[BaseModel], prefix: str = "") -> typing.Iterator[tuple[str, FieldInfo]]:
    """(dotted path, field) for every field, sections included, depth first."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, info
        if _is_model(info.annotation):
            yield from iter_leaves(info.annotation, path + ".")


def automl_lists(action: str) -> tuple[list[str], list[str]]:
    """(automl_default_parameters, automl_disabled_parameters) for an action."""
    model = SPEC_MODELS[action]
    if action not in TUNABLE_ACTIONS:
        return [], sorted(model.model_fields)
    searched, disabled = [], []
    for path, info in iter_leaves(model):
        automl = _extra(info).get("automl")
        if automl is None:
            continue
        if not automl.enabled:
            disabled.append(path)
        elif automl.default_searched:
            searched.append(path)
    return sorted(searched), sorted(disabled)


def popular_block(action: str) -> dict[str, dict[str, Any]]:
    """TAO's `popular` block: {section: {key: default}} for fields marked popular."""
    out: dict[str, dict[str, Any]] = {}
    for path, info in iter_leaves(SPEC_MODELS[action]):
        if _extra(info).get("popular"):
            section, _, key = path.rpartition(".")
            out.setdefault(section, {})[key] = _default_of(info)
    return out


def action_schema(action: str) -> dict[str, Any]:
    model = SPEC_MODELS[action]
    body = model_schema(model)
    defaults = model().model_dump(mode="json")
    if action != "dataset_convert":
        for name in TAO_SHARED_SECTIONS:
            if name not in body["properties"]:
                body["properties"][name] = {
                    "description": f"Accepted so TAO spec files validate; not used by {action} and ignored.",
                    "x-tao-ignored": True,
                }
    searched, disabled = automl_lists(action)
    return {
        "$schema": JSON_SCHEMA_DRAFT,
        "$id": f"https://github.com/sparse4d-skill-bank/sparse4d/schemas/{action}.schema.json",
        "title": f"Sparse4D {action} spec",
        "description": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else f"Sparse4D {action} spec",
        **body,
        "default": defaults,
        "automl_default_parameters": searched,
        "automl_disabled_parameters": disabled,
        "popular": popular_block(action),
        "x_tao_schema": {
            "action": action,
            "core_module": "annotations" if action == "dataset_convert" else "sparse4d",
            "model": "sparse4d",
            "network_arch": "sparse4d",
            "schema_action": "convert" if action == "dataset_convert" else action,
            "schema_version": SCHEMA_VERSION,
            "source": "sparse4d.config pydantic models (runner generate)",
        },
    }


def manifest() -> dict[str, Any]:
    actions = {}
    for action in SPEC_MODELS:
        searched, disabled = automl_lists(action)
        actions[action] = {
            "automl_default_parameters": searched,
            "automl_disabled_parameters": disabled,
            "core_module": "annotations" if action == "dataset_convert" else "sparse4d",
            "path": f"schemas/{action}.schema.json",
            "popular": popular_block(action),
            "schema_action": "convert" if action == "dataset_convert" else action,
            "spec_template": f"references/spec_template_{action}.yaml",
        }
    return {"actions": actions, "automl_enabled": True, "failures": {}, "model": "sparse4d", "network_arch": "sparse4d", "schema_version": SCHEMA_VERSION}
