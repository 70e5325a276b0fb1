"""The AutoML search space, read from the packaged train schema.

Which keys: the schema's ``automl_default_parameters`` plus the keys a user adds. How each is searched
comes from its schema node: ``valid_min``/``valid_max`` (else ``minimum``/``maximum``),
``x-automl-log-scale``, ``enum`` with ``option_weights``, ``math_cond`` and ``depends_on`` (grammar in
:mod:`sparse4d.automl.conditions`). Keys in ``automl_disabled_parameters`` (or under a disabled
section) and nodes marked ``automl_enabled: false`` are refused with a SpecError naming the key.

Sampling goes through a tiny ``suggest_float``/``suggest_int`` protocol (an Optuna trial fits), and
returns dotted-key overrides. Weighted enums are sampled as a uniform float mapped through the
cumulative option weights, because Optuna's categorical sampling ignores weights.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import InputFileError, SpecError
from .conditions import Dependency, MathCondition, lookup_in, parse_dependency, parse_math_cond

PACKAGED_TRAIN_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "train.schema.json"
UNIFORM_SUFFIX = "#u"  # Optuna parameter name of a weighted enum's uniform draw: "<key>#u"

Kind = Literal["float", "int", "categorical"]


class Suggester(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...


class UnsatisfiableCondition(SpecError):
    """A trial's sampled values leave no value that meets a ``math_cond``."""


@dataclass(frozen=True)
class SearchParam:
    """One searched spec key and how to sample it."""

    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    weights: tuple[float, ...] = ()
    condition: MathCondition | None = None
    depends_on: tuple[Dependency, ...] = ()

    @property
    def reads(self) -> set[str]:
        """Keys this parameter's sampling reads (condition operands and parents)."""
        return (self.condition.keys if self.condition else set()) | {d.key for d in self.depends_on}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "kind": self.kind}
        if self.kind == "categorical":
            out.update(choices=list(self.choices), weights=list(self.weights))
        else:
            out.update(low=self.low, high=self.high, log=self.log)
        if self.condition:
            out["math_cond"] = self.condition.text
        if self.depends_on:
            out["depends_on"] = [d.key if d.op is None else f"{d.key} {d.op} {list(d.values)}" for d in self.depends_on]
        return out


@dataclass
class Sample:
    """Values for one trial: overrides to apply, keys skipped (with why), and weighted-enum choices."""

    values: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    """Parameters in sampling order (every key a parameter reads is sampled before it)."""

    params: tuple[SearchParam, ...]
    schema_defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.params]

    def sample(self, suggester: Suggester, spec: Mapping[str, Any]) -> Sample:
        """Sample every parameter whose dependencies hold; values honour bounds and math conditions."""
        out = Sample()
        for param in self.params:
            lookup = self._lookup(out.values, spec)
            reason = _unmet_dependency(param, out, lookup)
            if reason:
                out.skipped[param.key] = reason
                continue
            out.values[param.key] = _sample_one(param, suggester, lookup)
        return out

    def check_static_conditions(self, spec: Mapping[str, Any]) -> None:
        """Refuse a spec that leaves a parameter no room (conditions that read only fixed keys)."""
        searched = set(self.keys)
        for param in self.params:
            if param.condition is None or param.condition.keys & searched or param.kind == "categorical":
                continue
            low, high = param.condition.narrow(param.low, param.high, self._lookup({}, spec), param.key)  # type: ignore[arg-type]
            if low > high:
                raise SpecError(f"math_cond {param.condition.text!r} leaves no value in [{param.low}, {param.high}]",
                                key=param.key, hint="change the spec value the condition reads, or drop the parameter")

    def _lookup(self, values: Mapping[str, Any], spec: Mapping[str, Any]):
        inner = lookup_in(values, spec)

        def lookup(key: str) -> Any:
            try:
                return inner(key)
            except KeyError:
                if key in self.schema_defaults:
                    return self.schema_defaults[key]
                raise

        return lookup


def _unmet_dependency(param: SearchParam, sample: Sample, lookup) -> str | None:
    for dep in param.depends_on:
        if dep.key in sample.skipped:
            return f"its parent {dep.key} was not sampled"
        try:
            value, present = lookup(dep.key), True
        except KeyError:
            value, present = None, False
        if not dep.satisfied(present, value):
            if not present:
                return f"its parent {dep.key} is neither searched nor set"
            return f"{dep.key}={value!r} does not meet '{dep.op} {list(dep.values)}'"
    return None


def _sample_one(param: SearchParam, suggester: Suggester, lookup) -> Any:
    if param.kind == "categorical":
        draw = suggester.suggest_float(param.key + UNIFORM_SUFFIX, 0.0, 1.0)
        return pick_weighted(param.choices, param.weights, draw)
    low, high = float(param.low), float(param.high)  # type: ignore[arg-type]
    if param.condition is not None:
        low, high = param.condition.narrow(low, high, lookup, param.key)
    if low > high:
        raise UnsatisfiableCondition(f"math_cond {param.condition.text!r} leaves no value in "  # type: ignore[union-attr]
                                     f"[{param.low}, {param.high}] for this trial", key=param.key)
    base = param.condition.power_base() if param.condition else None
    if base is not None:  # "^ 2": search the exponent, so every value is a whole power
        lo_exp = math.ceil(math.log(max(low, 1.0), base) - 1e-9)
        hi_exp = math.floor(math.log(high, base) + 1e-9) if high >= 1 else -1
        if lo_exp > hi_exp:
            raise UnsatisfiableCondition(f"no power of {base:g} lies in [{low}, {high}]", key=param.key)
        value: Any = base ** suggester.suggest_int(param.key + "#exp", lo_exp, hi_exp)
        value = int(round(value)) if param.kind == "int" else float(value)
    elif param.kind == "int":
        lo_i, hi_i = math.ceil(low), math.floor(high)
        if lo_i > hi_i:
            raise UnsatisfiableCondition(f"no whole number lies in [{low}, {high}]", key=param.key)
        value = suggester.suggest_int(param.key, lo_i, hi_i, log=param.log and lo_i > 0)
    else:
        value = suggester.suggest_float(param.key, low, high, log=param.log and low > 0)
    if param.condition is not None and not param.condition.holds(value, lookup, param.key):
        raise UnsatisfiableCondition(f"sampled {value!r} does not meet math_cond {param.condition.text!r}", key=param.key)
    return value


def pick_weighted(choices: tuple[Any, ...], weights: tuple[float, ...], draw: float) -> Any:
    """Map a uniform draw in [0, 1] to a choice, each taking a slice as wide as its weight."""
    total = float(sum(weights))
    edge = 0.0
    for choice, weight in zip(choices, weights):
        edge += weight / total
        if draw < edge:
            return choice
    return next(c for c, w in zip(reversed(choices), reversed(weights)) if w > 0)


# ---- building from the schema ----------------------------------------------------------------


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The train schema (the packaged one by default)."""
    target = Path(path) if path is not None else PACKAGED_TRAIN_SCHEMA
    try:
        schema = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"train schema {target} does not exist", key="schema",
                             hint="generate it with `runner generate`; AutoML is not runnable without it") from None
    except ValueError as exc:
        raise SpecError(f"train schema {target} is not valid JSON ({exc})", key="schema") from None
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise SpecError(f"train schema {target} has no properties", key="schema")
    return schema


def schema_node(schema: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    node: Any = schema
    for part in key.split("."):
        props = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(props, Mapping) or part not in props:
            return None
        node = props[part]
    return node if isinstance(node, dict) else None


def _disabled_reason(schema: Mapping[str, Any], key: str) -> str | None:
    disabled = set(schema.get("automl_disabled_parameters") or ())
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in disabled:
            return "it is listed in automl_disabled_parameters" if prefix == key else \
                f"its section {prefix} is listed in automl_disabled_parameters"
        node = schema_node(schema, prefix)
        if node is not None and node.get("automl_enabled") is False:
            return "the schema marks it automl_enabled: false" if prefix == key else \
                f"its section {prefix} is marked automl_enabled: false"
    return None


def _bound(node: Mapping[str, Any], valid: str, plain: str) -> float | None:
    for name in (valid, plain):
        value = node.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def param_from_node(key: str, node: Mapping[str, Any]) -> SearchParam:
    """How to search one schema leaf; SpecError naming `key` when it cannot be searched."""
    if "properties" in node or node.get("type") == "object":
        raise SpecError("is a section, not a value; name one of its keys", key=key)
    condition = parse_math_cond(node["math_cond"], where=key) if node.get("math_cond") else None
    depends = tuple(parse_dependency(d, where=key) for d in node.get("depends_on") or ())
    if node.get("enum") is not None or node.get("type") == "boolean":
        choices = tuple(node["enum"]) if node.get("enum") is not None else (True, False)
        weights = node.get("option_weights")
        if weights is None:
            weights = [1.0] * len(choices)
        if (not isinstance(weights, list) or len(weights) != len(choices)
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w)
                       for w in weights) or sum(weights) <= 0):
            raise SpecError(f"option_weights {weights!r} must be {len(choices)} non-negative numbers with a "
                            "positive sum", key=key)
        if not choices:
            raise SpecError("enum has no options", key=key)
        return SearchParam(key, "categorical", choices=choices, weights=tuple(float(w) for w in weights),
                           depends_on=depends)
    kind_name = node.get("type")
    if kind_name not in ("number", "integer"):
        raise SpecError(f"has type {kind_name!r}; AutoML searches numbers, integers, booleans and enums", key=key)
    low, high = _bound(node, "valid_min", "minimum"), _bound(node, "valid_max", "maximum")
    if low is None or high is None:
        raise SpecError("has no search range (valid_min/valid_max or minimum/maximum) in the schema", key=key)
    if low > high:
        raise SpecError(f"has valid_min {low} above valid_max {high}", key=key)
    log = bool(node.get("x-automl-log-scale"))
    if log and low <= 0:
        raise SpecError(f"is log-scale but its range starts at {low}; a log range must be above 0", key=key)
    kind: Kind = "int" if kind_name == "integer" or node.get("x-tao-type") == "int" else "float"
    return SearchParam(key, kind, low, high, log, condition=condition, depends_on=depends)


def _order(params: list[SearchParam]) -> tuple[SearchParam, ...]:
    """Topological order: a parameter comes after the searched keys it reads."""
    by_key = {p.key: p for p in params}
    done: list[SearchParam] = []
    state: dict[str, str] = {}

    def visit(param: SearchParam, chain: tuple[str, ...]) -> None:
        if state.get(param.key) == "done":
            return
        if state.get(param.key) == "visiting":
            raise SpecError(f"conditions form a cycle: {' -> '.join((*chain, param.key))}", key=param.key)
        state[param.key] = "visiting"
        for key in sorted(param.reads):
            if key in by_key:
                visit(by_key[key], (*chain, param.key))
        state[param.key] = "done"
        done.append(param)

    for param in params:
        visit(param, ())
    return tuple(done)


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Schema defaults as dotted keys (what the trainer uses for a key the spec leaves out)."""
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            if not isinstance(child, Mapping):
                continue
            key = f"{prefix}.{name}" if prefix else name
            if "default" in child and not isinstance(child["default"], (dict, list)):
                out[key] = child["default"]
            walk(child, key)

    walk(schema, "")
    return out


def build_search_space(schema: Mapping[str, Any], extra_params: Iterable[str] = (), *,
                       include_defaults: bool = True) -> SearchSpace:
    """The search space: default parameters (unless excluded) plus `extra_params`, in sampling order."""
    keys: list[str] = list(schema.get("automl_default_parameters") or ()) if include_defaults else []
    for key in extra_params:
        if key not in keys:
            keys.append(key)
    if not keys:
        raise SpecError("nothing to search: the schema lists no automl_default_parameters and no --param was given",
                        key="automl_default_parameters", hint="add parameters with --param KEY")
    params = []
    for key in keys:
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise SpecError(f"{key!r} is not a dotted spec key", key=str(key))
        reason = _disabled_reason(schema, key)
        if reason:
            raise SpecError(f"AutoML may not search this key: {reason}", key=key,
                            hint="drop it from --param; set it with -o KEY=VALUE instead")
        node = schema_node(schema, key)
        if node is None:
            raise SpecError("is not a key of the train schema", key=key, hint="check the spelling against schemas/train.schema.json")
        params.append(param_from_node(key, node))
    return SearchSpace(_order(params), _defaults(schema))
