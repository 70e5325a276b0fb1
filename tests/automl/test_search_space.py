"""The search space built from the packaged train schema: bounds, log scale, enums, conditions, dependencies."""
from __future__ import annotations

import copy
import math

import optuna
import pytest

from sparse4d.automl.conditions import parse_dependency, parse_math_cond
from sparse4d.automl.search_space import (
    UNIFORM_SUFFIX,
    UnsatisfiableCondition,
    build_search_space,
    load_schema,
    pick_weighted,
    schema_node,
)
from sparse4d.errors import SpecError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def _sample_many(space, spec, n=200, seed=0):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial, spec))
        study.tell(trial, 0.0)
    return out


def test_default_parameters_follow_schema_bounds_and_log_scale(schema):
    space = build_search_space(schema)
    assert set(space.keys) == set(schema["automl_default_parameters"])
    by_key = {p.key: p for p in space.params}
    for key, param in by_key.items():
        node = schema_node(schema, key)
        assert (param.low, param.high) == (node["valid_min"], node["valid_max"])
        assert param.log == bool(node.get("x-automl-log-scale"))
    assert by_key["train.optim.lr"].log and not by_key["train.optim.grad_clip.max_norm"].log
    samples = _sample_many(space, {})
    for key, param in by_key.items():
        values = [s.values[key] for s in samples]
        assert all(param.low <= v <= param.high for v in values), key
    # log scale: about half of the lr draws fall below the geometric midpoint (linear sampling gives ~13%)
    lr = by_key["train.optim.lr"]
    mid = math.sqrt(lr.low * lr.high)
    below = sum(s.values["train.optim.lr"] < mid for s in samples) / len(samples)
    assert 0.35 < below < 0.65


def test_integer_param_samples_whole_numbers(schema):
    space = build_search_space(schema, ["dataset.batch_size"], include_defaults=False)
    values = [s.values["dataset.batch_size"] for s in _sample_many(space, {}, n=60)]
    assert all(isinstance(v, int) and 1 <= v <= 8 for v in values)
    assert len(set(values)) > 3


def test_enum_uses_option_weights(schema):
    space = build_search_space(schema, ["train.optim.type"], include_defaults=False)
    (param,) = space.params
    assert param.choices == ("adamw", "adam", "sgd") and param.weights == (0.8, 0.15, 0.05)
    samples = _sample_many(space, {}, n=400)
    counts = {c: sum(s.values["train.optim.type"] == c for s in samples) for c in param.choices}
    assert 0.72 < counts["adamw"] / 400 < 0.88
    assert 0.08 < counts["adam"] / 400 < 0.22
    assert counts["sgd"] / 400 < 0.11
    assert pick_weighted(("a", "b", "c"), (0.8, 0.15, 0.05), 0.0) == "a"
    assert pick_weighted(("a", "b", "c"), (0.8, 0.15, 0.05), 0.85) == "b"
    assert pick_weighted(("a", "b", "c"), (0.8, 0.15, 0.05), 1.0) == "c"
    assert pick_weighted(("a", "b", "c"), (0.5, 0.5, 0.0), 1.0) == "b"  # a zero weight is never picked


def test_disabled_parameters_are_refused_by_name(schema):
    for key in ("train.num_epochs", "model.backbone.type", "dataset.train_dataset.ann_file", "results_dir"):
        with pytest.raises(SpecError) as err:
            build_search_space(schema, [key])
        assert err.value.key == key and "disabled" in str(err.value)
    with pytest.raises(SpecError, match="not a key of the train schema"):
        build_search_space(schema, ["train.optim.nope"])
    with pytest.raises(SpecError, match="section"):
        build_search_space(schema, ["train.optim"])


def test_dependency_guard_samples_momentum_only_for_sgd(schema):
    edited = copy.deepcopy(schema)
    schema_node(edited, "train.optim.momentum")["depends_on"] = ["train.optim.type == sgd"]
    space = build_search_space(edited, ["train.optim.type", "train.optim.momentum"], include_defaults=False)
    assert space.keys.index("train.optim.type") < space.keys.index("train.optim.momentum")
    samples = _sample_many(space, {}, n=300)
    with_sgd = [s for s in samples if s.values["train.optim.type"] == "sgd"]
    assert with_sgd, "sgd has weight 0.05; 300 draws should hit it"
    for s in samples:
        assert ("train.optim.momentum" in s.values) == (s.values["train.optim.type"] == "sgd")
        if "train.optim.momentum" in s.values:
            assert 0.8 <= s.values["train.optim.momentum"] <= 0.99
        else:
            assert "does not meet" in s.skipped["train.optim.momentum"]
    # a fixed parent: the guard reads the spec (and the schema default adamw when unset)
    fixed = build_search_space(edited, ["train.optim.momentum"], include_defaults=False)
    assert "train.optim.momentum" in _sample_many(fixed, {"train": {"optim": {"type": "sgd"}}}, n=1)[0].values
    assert "train.optim.momentum" not in _sample_many(fixed, {}, n=1)[0].values


def test_packaged_momentum_dependency_needs_its_parent(schema):
    """The packaged schema has a bare depends_on: the parent must be searched or set (default counts)."""
    space = build_search_space(schema, ["train.optim.momentum"], include_defaults=False)
    assert [d.key for d in space.params[0].depends_on] == ["train.optim.type"]


def test_math_condition_narrows_range_against_spec_and_sampled_keys(schema):
    edited = copy.deepcopy(schema)
    node = schema_node(edited, "train.optim.grad_clip.max_norm")
    node["math_cond"] = "<= train.num_epochs * 2 and > 1"
    space = build_search_space(edited, ["train.optim.grad_clip.max_norm"], include_defaults=False)
    values = [s.values["train.optim.grad_clip.max_norm"] for s in _sample_many(space, {"train": {"num_epochs": 12}}, n=50)]
    assert all(5.0 <= v <= 24.0 for v in values)
    with pytest.raises(SpecError, match="leaves no value"):
        space.check_static_conditions({"train": {"num_epochs": 2}})  # 2 * 2 < valid_min 5
    # a condition on another searched key: that key is sampled first
    schema_node(edited, "train.optim.weight_decay")["math_cond"] = "<= train.optim.lr * 100"
    space = build_search_space(edited, ["train.optim.weight_decay", "train.optim.lr"], include_defaults=False)
    assert space.keys == ["train.optim.lr", "train.optim.weight_decay"]
    for s in _sample_many(space, {}, n=50):
        assert s.values["train.optim.weight_decay"] <= s.values["train.optim.lr"] * 100 * (1 + 1e-9)
    # powers of two
    schema_node(edited, "dataset.batch_size")["math_cond"] = "^ 2"
    space = build_search_space(edited, ["dataset.batch_size"], include_defaults=False)
    assert {s.values["dataset.batch_size"] for s in _sample_many(space, {}, n=40)} <= {1, 2, 4, 8}


def test_unsatisfiable_condition_for_a_trial(schema):
    edited = copy.deepcopy(schema)
    schema_node(edited, "train.optim.weight_decay")["math_cond"] = "< train.optim.lr"
    space = build_search_space(edited, ["train.optim.weight_decay", "train.optim.lr"], include_defaults=False)
    study = optuna.create_study()
    with pytest.raises(UnsatisfiableCondition):  # any lr below 1e-4 (weight_decay valid_min) leaves no room
        for _ in range(200):
            space.sample(study.ask(), {})


@pytest.mark.parametrize("text", ["", "train.num_epochs", "<= (1", "<= 1 or > 0", "<= __import__('os')", "^ 1", "<= 1;"])
def test_bad_conditions_are_spec_errors(text):
    with pytest.raises(SpecError):
        parse_math_cond(text, where="k")


def test_condition_grammar_evaluates_without_eval():
    cond = parse_math_cond("<= train.num_epochs - 1 && >= -(2 * 3) / 4", where="k")
    lookup = {"train.num_epochs": 10}.__getitem__
    assert cond.keys == {"train.num_epochs"}
    assert cond.holds(9, lookup, "k") and not cond.holds(10, lookup, "k") and not cond.holds(-2, lookup, "k")
    dep = parse_dependency("train.optim.type in [sgd, adam]", where="k")
    assert dep.satisfied(True, "adam") and not dep.satisfied(True, "adamw") and not dep.satisfied(False, None)
    with pytest.raises(SpecError):
        parse_dependency("train.optim.type ~ sgd", where="k")


def test_weighted_enum_is_a_uniform_optuna_param(schema):
    space = build_search_space(schema, ["train.optim.type"], include_defaults=False)
    study = optuna.create_study()
    trial = study.ask()
    value = space.sample(trial, {}).values["train.optim.type"]
    draw = trial.params["train.optim.type" + UNIFORM_SUFFIX]
    assert value == pick_weighted(("adamw", "adam", "sgd"), (0.8, 0.15, 0.05), draw)
    # sampling again on the same trial gives the same value (a restarted controller re-samples safely)
    assert space.sample(trial, {}).values["train.optim.type"] == value
