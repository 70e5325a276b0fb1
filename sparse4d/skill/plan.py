"""`make_plan`: one JSON document an agent can execute for one Sparse4D action.

It applies, in order: the trigger check (is this request ours?), the AutoML policy (train only), the
data-source table (mandatory overrides, scene basenames read from the converter's output), the user's
overrides (they win; conflicts become warnings) and the spec-param table (which keys the launcher
fills in, and the exact parent checkpoint when a parent job is given). Nothing is launched or written.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparse4d.errors import DataError, InputFileError, SpecError

from . import data_sources as ds
from .checkpoints import select_parent_model
from .policy import AUTOML_ROUTE, default_skill_dir, resolve_automl_policy
from .schema_keys import key_in_schema, load_schema
from .spec_params import describe_spec_params, infer_spec_params
from .triggers import matches_skill, other_model_named

SKILL_NAME = "sparse4d"
RESULTS_PLACEHOLDER = "<job results_dir>"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_EXPORT_WORDS = re.compile(r"\b(export|onnx|deploy|deployment|tensorrt|trt)\b", re.IGNORECASE)
EXPORT_CONTRACT = (
    "export contract: the exported graph is rebuilt from the checkpoint's saved config, so its camera slots "
    "(model.head.deformable_model.max_num_cams), temporal instances "
    "(model.head.instance_bank.num_temp_instances) and anchors (the weights trained from anchor_init.npy) "
    "are the training run's; train with the values the deployment needs"
)


def parse_overrides(pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """``["a.b=1", ...]`` (or a mapping) -> {"a.b": "1"}; malformed entries are a SpecError."""
    if pairs is None:
        return {}
    items = pairs.items() if isinstance(pairs, Mapping) else (_split_pair(p) for p in pairs)
    out: dict[str, str] = {}
    for key, value in items:
        if not _KEY_RE.match(key):
            raise SpecError(f"{key!r} is not a dotted spec key", key=key, hint="write overrides as key.path=value")
        out[key] = str(value)
    return out


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep:
        raise SpecError(f"override {pair!r} has no '='", hint="write overrides as key.path=value")
    return key.strip(), value.strip()


# --------------------------------------------------------------------------- jobs


def _job_store(jobs_root: str | Path | None):
    from sparse4d.jobs.store import JobStore  # torch-free; imported here so the skill layer loads alone

    return JobStore(jobs_root)


def job_results_dir(job_id: str, *, jobs_root: str | Path | None = None, expect_action: str | None = None,
                    warnings: list[str] | None = None) -> Path:
    """``<jobs root>/<job id>/results`` of an existing job (optionally of the given action)."""
    store = _job_store(jobs_root)
    record = store.read(job_id)
    if expect_action and record.get("action") != expect_action:
        raise SpecError(f"job {job_id} is a {record.get('action')} job, not {expect_action}", key="job_id",
                        hint=f"pass the id of a {expect_action} job")
    if record.get("status") != "Done" and warnings is not None:
        warnings.append(f"job {job_id} is {record.get('status')}, not Done: its results may be incomplete")
    # The record names its results folder (a spec may have set results_dir); default <job>/results.
    return Path(record.get("results_dir") or store.job_dir(job_id) / "results")


def list_artifacts(folder: Path, *, limit: int = 10_000) -> list[str]:
    """Files below ``folder`` as posix paths relative to it (sorted)."""
    if not folder.is_dir():
        raise InputFileError(f"results folder {folder} does not exist", key="parent_job_id")
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            out.append(Path(dirpath, name).relative_to(folder).as_posix())
            if len(out) >= limit:
                raise DataError(f"{folder} holds more than {limit} files", key="parent_job_id")
    return sorted(out)


# --------------------------------------------------------------------------- plan


def _not_ours(action: str, request: str | None, reason: str) -> dict[str, Any]:
    return {"ok": False, "skill": None, "status": "not_this_skill", "action": action, "request": request,
            "reason": reason}


def _check_user_keys(action: str, user: Mapping[str, str], skill_dir: Path, warnings: list[str]) -> None:
    schema = load_schema(skill_dir, action)
    if schema is None:
        warnings.append(f"schemas/{action}.schema.json is missing: override keys were not checked")
        return
    unknown = [k for k in user if not key_in_schema(schema, k)]
    if unknown:
        raise SpecError(f"{action} has no spec key {', '.join(sorted(unknown))}", key=sorted(unknown)[0],
                        hint=f"see schemas/{action}.schema.json or references/spec_template_{action}.yaml")


def make_plan(
    action: str,
    request: str | None = None,
    *,
    roots: Mapping[str, str] | None = None,
    convert_dir: str | None = None,
    convert_job_id: str | None = None,
    parent_job_id: str | None = None,
    parent_dir: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    scene: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    automl_policy: str | None = None,
    skill_dir: Path | str | None = None,
    jobs_root: str | Path | None = None,
    lister: ds.Lister | None = None,
    check_exists: bool = True,
) -> dict[str, Any]:
    """Plan one action. Raises Sparse4DError subclasses for invalid requests and missing data.

    Returns a plan with ``status``: ``ready``, ``needs_dataset_convert`` (no convert results were given
    for an action that reads them) or ``not_this_skill`` (the request names another network).
    """
    ds.sources_for(action)  # unknown action -> SpecError
    root_dir = Path(skill_dir) if skill_dir is not None else default_skill_dir()
    other = other_model_named(request)
    if other:
        return _not_ours(action, request, f"the request is about {other}, not Sparse4D")
    if convert_dir and convert_job_id:
        raise SpecError("give either a convert job id or a convert folder, not both", key="convert_job_id")
    if parent_dir and parent_job_id:
        raise SpecError("give either a parent job id or a parent folder, not both", key="parent_job_id")
    warnings: list[str] = []
    user = parse_overrides(overrides)
    _check_user_keys(action, user, root_dir, warnings)
    decision = resolve_automl_policy(request, automl_policy, action=action, skill_dir=root_dir)
    if decision.report:
        warnings.append(decision.report)
    roots = {k: v for k, v in (roots or {}).items() if v}
    plan: dict[str, Any] = {
        "ok": True,
        "skill": SKILL_NAME,
        "action": action,
        "request": request,
        "matches_skill": matches_skill(request) if request else None,
        "policy": decision.to_dict(),
        "route": decision.route,
        "skill_dir": decision.skill_dir,
        "spec_template": f"references/spec_template_{action}.yaml",
        "schema": f"schemas/{action}.schema.json",
    }

    if convert_job_id:
        convert_dir = str(job_results_dir(convert_job_id, jobs_root=jobs_root, expect_action="dataset_convert",
                                          warnings=warnings))
    if ds.needs_convert(action) and not convert_dir:
        missing_roots = [r for r in ds.required_roles("dataset_convert") if r not in roots]
        plan.update({
            "status": "needs_dataset_convert",
            "message": ds.CONVERT_REQUIRED_MESSAGE,
            "prerequisites": [{
                "action": "dataset_convert",
                "spec_overrides": ({"aicity.root": roots["train_datasets"]} if "train_datasets" in roots else {}),
                "missing": [f"{r} ({ds.ROLE_FLAGS[r]})" for r in missing_roots],
                "then": f"runner plan {action} --convert-job-id <dataset_convert job id> (same dataset options)",
            }],
            "spec_overrides": {},
            "warnings": warnings,
        })
        return plan

    resolution = ds.resolve_data_sources(action, roots, convert_dir, scene, user, lister=lister,
                                         check_exists=check_exists)
    warnings.extend(resolution.warnings)

    parent_results: str | None = parent_dir
    if parent_job_id:
        parent_results = str(job_results_dir(parent_job_id, jobs_root=jobs_root, warnings=warnings))
    parent_artifacts = list_artifacts(Path(parent_results)) if parent_results else None
    params = describe_spec_params(action)
    provided = set(user)
    inferred = infer_spec_params(
        action, results_dir=RESULTS_PLACEHOLDER, parent_artifacts=parent_artifacts,
        parent_results_dir=parent_results, resume=action == "train" and parent_artifacts is not None,
        epoch=epoch, step=step, provided=provided, env={},
    ) if _parent_ok(action, parent_artifacts, provided) else {}
    for entry in params:
        key = entry["key"]
        if key in provided:
            entry["value"], entry["from"] = user[key], "user override"
        elif entry["function"] == "key":
            entry["value"] = "<$SPARSE4D_ENCRYPTION_KEY>" if os.environ.get("SPARSE4D_ENCRYPTION_KEY") else None
        elif key in inferred:
            entry["value"] = inferred[key]
        elif entry["function"] == "parent_model":
            raise InputFileError(f"{action} needs a model for {key}, but no parent job was given", key=key,
                                 hint=f"pass --parent-job-id <job id> or -o {key}=<path>")
        else:
            entry["value"] = None
    if parent_artifacts is not None and action in ("evaluate", "inference", "export", "quantize", "train"):
        choice = select_parent_model(action, parent_artifacts, epoch=epoch, step=step)
        plan["parent"] = {"job_id": parent_job_id, "results_dir": parent_results, "artifact": choice.name,
                          "kind": choice.kind, "epoch": choice.epoch, "step": choice.step, "reason": choice.reason}
        warnings.extend(choice.warnings)
    elif epoch is not None or step is not None:
        warnings.append("--epoch/--step are ignored without a parent job")

    if action == "export":
        warnings.append(EXPORT_CONTRACT)
    elif action == "train" and request and _EXPORT_WORDS.search(request):
        warnings.append(EXPORT_CONTRACT)
    if action == "train" and decision.route == AUTOML_ROUTE:
        plan["automl"] = {"route": AUTOML_ROUTE, "skill_dir": decision.skill_dir,
                          "monitor": "val_mAP", "metric_aliases": ["img_bbox_NuScenes/mAP", "mAP"],
                          "preserve_overrides": True}

    overrides_out = dict(resolution.overrides)
    argv = ["sparse4d", action, "-e", f"<spec.yaml from {plan['spec_template']}>"]
    argv += [f"{k}={v}" for k, v in overrides_out.items()]
    plan.update({
        "status": "ready",
        "convert_results": convert_dir,
        "scenes": resolution.scenes,
        "data_sources": resolution.sources,
        "spec_overrides": overrides_out,
        "spec_params": params,
        "command": argv,
        "warnings": warnings,
    })
    return plan


def _parent_ok(action: str, parent_artifacts: list[str] | None, provided: set[str]) -> bool:
    """Spec params can be computed: every parent_model key has a parent or a user value."""
    needs_parent = [e["key"] for e in describe_spec_params(action) if e["function"] == "parent_model"]
    return parent_artifacts is not None or all(k in provided for k in needs_parent)
