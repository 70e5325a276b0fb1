"""Run tests/evals/evals.json against the trigger check and the planner.

Each eval is also a prompt in the skill-creator evals.json format, so an agent harness can run the same
tasks end to end; here the checkable part (`expected_skill`, `action`, `inputs`, `expect`) is verified
against `matches_skill` and `make_plan` over a jobs root and datasets built by the fixture.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparse4d.errors import Sparse4DError
from sparse4d.skill.plan import make_plan
from sparse4d.skill.triggers import matches_skill

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EVALS = json.loads((HERE / "evals.json").read_text(encoding="utf-8"))
SCENE = "Warehouse_000+bev-sensor-random-0"
S3_SCENE = "subsetscene+bev-sensor-random-0"


def _write_job(jobs: Path, job_id: str, action: str, files: list[str]) -> Path:
    results = jobs / job_id / "results"
    results.mkdir(parents=True)
    for name in files:
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_bytes(b"x")
    record = {"id": job_id, "action": action, "status": "Done", "results_dir": str(results)}
    (jobs / job_id / "job.json").write_text(json.dumps(record), encoding="utf-8")
    return results


def _converted(scenes: list[str]) -> list[str]:
    return ["anchor_init.npy"] + [f"{s}/{scene}_infos_{s}.pkl" for scene in scenes for s in ("train", "val", "test")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("evals")
    data, infer, calib, jobs = base / "aicity", base / "new_site", base / "calib", base / "jobs"
    for split in ("train", "val", "test"):
        (data / split).mkdir(parents=True)
    (infer / "test").mkdir(parents=True)
    calib.mkdir()
    converted = _write_job(jobs, "convert-01", "dataset_convert", _converted([SCENE]))
    _write_job(jobs, "convert-multi", "dataset_convert",
               _converted(["Warehouse_000+bev-sensor-random-0", "Warehouse_001+bev-sensor-random-0"]))
    train = _write_job(jobs, "train-01", "train", [
        "model_epoch_000_step_00010.pth", "model_epoch_001_step_00020.pth", "model_epoch_002_step_00030.pth",
        "model_latest.pth", "status.json"])
    export = _write_job(jobs, "export-01", "export", ["model.onnx", "status.json"])
    quant = _write_job(jobs, "quant-01", "quantize", ["quantized_model_torchao.pth", "status.json"])
    return {"DATA": str(data), "INFER": str(infer), "CALIB": str(calib), "JOBS": str(jobs),
            "CONVERTED": str(converted), "SCENE": SCENE, "TRAIN_RESULTS": str(train),
            "EXPORT_RESULTS": str(export), "QUANT_RESULTS": str(quant)}


def fill(value: Any, world: dict[str, str]) -> Any:
    """Replace {NAME} placeholders (only known names; other braces stay)."""
    if isinstance(value, str):
        for name, real in world.items():
            value = value.replace("{" + name + "}", real)
        return value
    if isinstance(value, list):
        return [fill(v, world) for v in value]
    if isinstance(value, dict):
        return {fill(k, world): fill(v, world) for k, v in value.items()}
    return value


def s3_lister(prefix: str) -> list[str]:
    """The bucket of the seed's examples: one converted scene under s3://bucket/results/job-123."""
    keys = [f"results/job-123/{k}" for k in _converted([S3_SCENE])]
    key_prefix = prefix[len("s3://bucket/"):].rstrip("/") + "/"
    return [k for k in keys if k.startswith(key_prefix)]


def run_plan(case: dict[str, Any], world: dict[str, str]) -> dict[str, Any]:
    inputs = fill(case["inputs"], world)
    roots = {role: inputs.get(flag) for role, flag in (
        ("train_datasets", "train_root"), ("eval_dataset", "eval_root"),
        ("inference_dataset", "inference_root"), ("calibration_dataset", "calibration_root"))}
    try:
        return make_plan(
            case["action"], case["prompt"], roots={k: v for k, v in roots.items() if v},
            convert_dir=inputs.get("convert_dir"), convert_job_id=inputs.get("convert_job_id"),
            parent_job_id=inputs.get("parent_job_id"), epoch=inputs.get("epoch"), step=inputs.get("step"),
            scene=inputs.get("scene"), overrides=inputs.get("overrides"), automl_policy=inputs.get("automl_policy"),
            skill_dir=REPO, jobs_root=world["JOBS"], lister=s3_lister,
        )
    except Sparse4DError as exc:
        return {"error": {"exit_code": exc.exit_code, "key": exc.key, "text": str(exc)}}


def test_eval_file_format() -> None:
    assert EVALS["skill_name"] == "sparse4d"
    ids = [case["id"] for case in EVALS["evals"]]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    actions = {case["action"] for case in EVALS["evals"] if case["expected_skill"]}
    assert {"dataset_convert", "train", "evaluate", "inference", "export", "quantize"} <= actions
    assert sum(case["expected_skill"] is None for case in EVALS["evals"]) >= 5
    for case in EVALS["evals"]:
        assert case["prompt"] and case["expected_output"] and case["expectations"]


@pytest.mark.parametrize("case", EVALS["evals"], ids=lambda c: f"eval{c['id']:02d}")
def test_eval(case: dict[str, Any], world: dict[str, str]) -> None:
    assert matches_skill(case["prompt"]) == (case["expected_skill"] == "sparse4d"), case["prompt"]
    if case["action"] is None:
        return
    plan = run_plan(case, world)
    expect = fill(case["expect"], world)
    if "error" in expect:
        assert "error" in plan, f"expected an error, got status {plan.get('status')}"
        err = plan["error"]
        assert err["exit_code"] == expect["error"]["exit_code"], err
        if "key" in expect["error"]:
            assert err["key"] == expect["error"]["key"], err
        for text in expect["error"].get("message_contains", []):
            assert text in err["text"], err
        return
    assert "error" not in plan, plan.get("error")
    for field in ("status", "route", "message"):
        if field in expect:
            assert plan[field] == expect[field]
    if "policy" in expect:
        assert plan["policy"]["policy"] == expect["policy"]
    if "policy_source" in expect:
        assert plan["policy"]["source"] == expect["policy_source"]
    if "automl_monitor" in expect:
        assert plan["automl"]["monitor"] == expect["automl_monitor"]
        assert plan["automl"]["skill_dir"] == str(REPO)
    for key, value in expect.get("spec_overrides", {}).items():
        assert plan["spec_overrides"].get(key) == value, key
    if "spec_overrides_exact" in expect:
        assert plan["spec_overrides"] == expect["spec_overrides_exact"]
    params = {p["key"]: p.get("value") for p in plan.get("spec_params", [])}
    for key, value in expect.get("spec_params", {}).items():
        assert params.get(key) == value, key
    for text in expect.get("warnings_contain", []):
        assert any(text in w for w in plan["warnings"]), plan["warnings"]
    if "prerequisite_overrides" in expect:
        assert plan["prerequisites"][0]["spec_overrides"] == expect["prerequisite_overrides"]
    for value in plan.get("spec_overrides", {}).values():  # a ready plan never points at *latest*
        assert "latest" not in value
