"""AutoML policy resolution: explicit value > request phrases > default on; train-only routing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sparse4d.errors import SpecError
from sparse4d.skill.policy import (
    AUTOML_ROUTE,
    DIRECT_ROUTE,
    NOT_RUNNABLE_REPORT,
    policy_from_request,
    resolve_automl_policy,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def packaged(tmp_path: Path) -> Path:
    """A plugin root with a parseable train schema + template (the runnable case)."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "references").mkdir()
    (tmp_path / "schemas" / "train.schema.json").write_text(json.dumps({"type": "object", "default": {"train": {}}}))
    (tmp_path / "references" / "spec_template_train.yaml").write_text("train:\n  num_epochs: 10\n")
    (tmp_path / "references" / "skill_info.yaml").write_text("name: sparse4d\nautoml_enabled: true\n")
    return tmp_path


OFF_PHRASES = [
    "Train Sparse4D but turn off AutoML",
    "train sparse4d, disable AutoML for this one",
    "Train Sparse4D on s3://bucket/data, no HPO",
    "just a plain training of Sparse4D please",
    "train Sparse4D without AutoML",
    "Train Sparse4D with AutoML turned off".replace("turned off", "off"),
    "switch AutoML off and train Sparse4D",
    "Please train sparse4d; AutoML disabled.",
    "train Sparse4D, no hyperparameter search",
    "I don't want AutoML, just train Sparse4D",
    "do not use automl for the sparse4d train run",
    "Train Sparse4D without any HPO",
    "skip AutoML and train Sparse4D directly",
    "Train Sparse4D\u2014plain training run, thanks",
    "train sparse4d, turn  AUTO-ML off",
    "no auto ml: train Sparse4D on /data",
    "Train Sparse4D without hyperparameter tuning",
]
NOT_OFF_PHRASES = [  # (request, expected policy from the request or None = default)
    ("don't turn off AutoML, train Sparse4D", "on"),
    ("do not disable automl", "on"),
    ("Never disable AutoML when training Sparse4D", "on"),
    ("train Sparse4D without turning off AutoML", "on"),
    ("I don\u2019t want to disable AutoML", "on"),
    ("train Sparse4D with AutoML", "on"),
    ("train Sparse4D on my AICity scenes", None),
    ("train Sparse4D for 30 epochs on 8 GPUs", None),
    ("keep AutoML on and train Sparse4D", "on"),
    ("run a normal Sparse4D training", None),
]


@pytest.mark.parametrize("request_text", OFF_PHRASES)
def test_off_phrases_turn_automl_off(request_text: str, packaged: Path) -> None:
    decision = resolve_automl_policy(request_text, skill_dir=packaged)
    assert (decision.policy, decision.source, decision.route) == ("off", "request", DIRECT_ROUTE)
    assert decision.matched_phrase


@pytest.mark.parametrize(("request_text", "expected"), NOT_OFF_PHRASES)
def test_negations_and_neutral_requests_are_not_off(request_text: str, expected: str | None, packaged: Path) -> None:
    assert policy_from_request(request_text)[0] == expected
    decision = resolve_automl_policy(request_text, skill_dir=packaged)
    assert decision.policy == "on"
    assert decision.source == ("request" if expected else "default")
    assert decision.route == AUTOML_ROUTE
    assert decision.skill_dir == str(packaged)


@pytest.mark.parametrize(("explicit", "request_text", "policy"), [
    ("off", "train Sparse4D with AutoML", "off"),
    ("on", "train Sparse4D, no HPO", "on"),
    (" OFF ", None, "off"),
    ("On", "plain training", "on"),
])
def test_explicit_value_wins(explicit: str, request_text: str | None, policy: str, packaged: Path) -> None:
    decision = resolve_automl_policy(request_text, explicit, skill_dir=packaged)
    assert (decision.policy, decision.source) == (policy, "explicit")
    assert decision.route == (AUTOML_ROUTE if policy == "on" else DIRECT_ROUTE)


@pytest.mark.parametrize("bad", ["auto", "true", "yes", "1", "enabled", "offf"])
def test_only_on_and_off_are_accepted(bad: str, packaged: Path) -> None:
    with pytest.raises(SpecError, match="not a valid AutoML policy"):
        resolve_automl_policy("train Sparse4D", bad, skill_dir=packaged)


def test_policy_written_in_the_request_is_checked(packaged: Path) -> None:
    assert resolve_automl_policy("train Sparse4D with automl_policy: off", skill_dir=packaged).policy == "off"
    with pytest.raises(SpecError):
        resolve_automl_policy("train Sparse4D with automl_policy=maybe", skill_dir=packaged)


def test_contradictory_request_asks_for_an_explicit_value(packaged: Path) -> None:
    with pytest.raises(SpecError, match="--automl-policy"):
        resolve_automl_policy("use AutoML but also no HPO", skill_dir=packaged)


@pytest.mark.parametrize("action", ["dataset_convert", "evaluate", "inference", "export", "quantize"])
def test_non_train_actions_never_route_to_automl(action: str, packaged: Path) -> None:
    decision = resolve_automl_policy("use AutoML", "on", action=action, skill_dir=packaged)
    assert decision.route == DIRECT_ROUTE and decision.report is None


@pytest.mark.parametrize("broken", ["missing_schema", "missing_template", "bad_json", "bad_yaml", "empty_template"])
def test_missing_or_broken_schema_reports_not_runnable(broken: str, packaged: Path) -> None:
    schema = packaged / "schemas" / "train.schema.json"
    template = packaged / "references" / "spec_template_train.yaml"
    if broken == "missing_schema":
        schema.unlink()
    elif broken == "missing_template":
        template.unlink()
    elif broken == "bad_json":
        schema.write_text("{not json")
    elif broken == "bad_yaml":
        template.write_text("train: [unclosed\n")
    else:
        template.write_text("")
    decision = resolve_automl_policy("train Sparse4D", skill_dir=packaged)
    assert decision.policy == "on" and not decision.runnable
    assert decision.route == DIRECT_ROUTE
    assert decision.report == "AutoML is enabled but not runnable for this model until schemas are generated"
    assert decision.report == NOT_RUNNABLE_REPORT


def test_model_layer_disable_is_respected(packaged: Path) -> None:
    (packaged / "references" / "skill_info.yaml").write_text("name: sparse4d\nautoml_enabled: false\n")
    decision = resolve_automl_policy("train Sparse4D", skill_dir=packaged)
    assert decision.route == DIRECT_ROUTE and "not enabled" in (decision.report or "")


def test_resolving_never_writes_metadata(packaged: Path) -> None:
    before = {p: p.read_bytes() for p in packaged.rglob("*") if p.is_file()}
    for text in OFF_PHRASES[:3]:
        resolve_automl_policy(text, skill_dir=packaged)
    resolve_automl_policy("x", "off", skill_dir=packaged)
    after = {p: p.read_bytes() for p in packaged.rglob("*") if p.is_file()}
    assert before == after


def test_packaged_repo_is_runnable_once_schemas_exist(tmp_path: Path) -> None:
    if not (REPO / "schemas" / "train.schema.json").is_file():
        pytest.skip("schemas/ not generated yet (runner generate)")
    decision = resolve_automl_policy("train Sparse4D", skill_dir=REPO)
    assert decision.runnable and decision.route == AUTOML_ROUTE
    shutil.copytree(REPO / "references", tmp_path / "references")
    assert resolve_automl_policy("train Sparse4D", skill_dir=tmp_path).report == NOT_RUNNABLE_REPORT
