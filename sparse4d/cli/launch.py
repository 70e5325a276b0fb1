"""The behaviour behind `runners/<action>.py` and `runner launch ACTION`.

validate -> plan data-source overrides -> infer spec params (parent checkpoint, results_dir, ...) ->
validate the resolved spec -> create_job(). `--dry-run` prints the resolved spec and launches nothing.
Torch-free: the trainer runs in the job's subprocess.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from ..codegen.generate import repo_root
from ..errors import InputFileError, SpecError
from .common import EXIT_CODES_HELP, emit_json, log, run_guarded

ROLE_OPTIONS = {
    "train_root": "train_datasets",
    "eval_root": "eval_dataset",
    "inference_root": "inference_dataset",
    "calibration_root": "calibration_dataset",
}


@dataclass
class LaunchRequest:
    """Everything an agent or operator can say about one launch."""

    action: str
    spec_path: Path | None = None
    overrides: list[str] = field(default_factory=list)
    request: str | None = None
    automl_policy: str | None = None
    roots: dict[str, str] = field(default_factory=dict)
    convert_job_id: str | None = None
    convert_dir: str | None = None
    scene: str | None = None
    parent_job_id: str | None = None
    epoch: int | None = None
    step: int | None = None
    name: str | None = None
    force: bool = False
    jobs_root: str | None = None


def template_path(action: str) -> Path:
    return repo_root() / "references" / f"spec_template_{action}.yaml"


def _placeholder_free(value: Any, placeholder: str) -> Any:
    """Spec-param values that point into the job's own results folder become relative to it."""
    if not isinstance(value, str) or placeholder not in value:
        return value
    if value == placeholder:
        return ""  # results_dir: the job backend sets <job>/results
    return value.replace(placeholder, "").lstrip("/")


def resolve(req: LaunchRequest) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(plan, resolved spec mapping, validation report) for a launch request; raises on a bad request."""
    from ..config import read_spec_file, validate_spec
    from ..skill.plan import RESULTS_PLACEHOLDER, make_plan

    plan = make_plan(
        req.action,
        req.request,
        roots=req.roots,
        convert_dir=req.convert_dir,
        convert_job_id=req.convert_job_id,
        parent_job_id=req.parent_job_id,
        epoch=req.epoch,
        step=req.step,
        scene=req.scene,
        overrides=req.overrides,
        automl_policy=req.automl_policy,
        jobs_root=req.jobs_root,
    )
    if plan.get("status") == "not_this_skill":
        raise SpecError(plan.get("message") or "the request is not about Sparse4D", key="request")
    if plan.get("status") == "needs_dataset_convert":
        raise InputFileError(plan["message"], key="convert_job_id", hint="launch dataset_convert first, then pass --convert-job-id")
    spec = read_spec_file(req.spec_path or template_path(req.action))
    overrides: dict[str, Any] = dict(plan.get("spec_overrides", {}))
    for entry in plan.get("spec_params", []):
        if entry.get("value") is None or entry.get("function") == "key":
            continue  # the encryption key travels by environment, never in the spec
        overrides.setdefault(entry["key"], _placeholder_free(entry["value"], RESULTS_PLACEHOLDER))
    from ..config.loading import parse_override

    for text in req.overrides:  # the user's own values win (typed as YAML scalars)
        key, value = parse_override(text)
        overrides[key] = value
    overrides = {k: _typed(v) for k, v in overrides.items()}
    overrides.update(_local_inputs(spec, overrides))
    report = validate_spec(req.action, spec, overrides=overrides, for_launch=True)
    resolved = report.spec.model_dump(mode="json") if report.spec is not None else None
    return plan, resolved, report


def _local_inputs(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, str]:
    """Sync every s3:// input (data roots, annotations, anchors, checkpoints) to the ETag-keyed cache.

    results_dir stays remote: the job writes locally and the supervisor uploads on completion.
    """
    from ..config.loading import apply_overrides
    from ..config.semantic import walk_leaves
    from ..jobs.storage import is_s3_uri, sync_to_cache

    merged = apply_overrides(spec, overrides)
    local: dict[str, str] = {}
    for key, value in walk_leaves(merged):
        if is_s3_uri(value) and "[" not in key and key != "results_dir" and not key.endswith(".results_dir"):
            local[key] = str(sync_to_cache(value))
            log(f"{key}: {value} -> {local[key]}")
    return local


def _typed(value: Any) -> Any:
    """Plan values arrive as strings; read numbers/booleans/lists the way the spec file would."""
    if not isinstance(value, str):
        return value
    from ..config.loading import parse_yaml_text

    try:
        parsed = parse_yaml_text(value, "override")
    except SpecError:
        return value
    return parsed if isinstance(parsed, (int, float, bool, list)) and not isinstance(parsed, str) else value


def launch(req: LaunchRequest, *, dry_run: bool = False, wait: bool = False, follow: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Resolve and (unless dry_run) create the job; returns a JSON-ready result document."""
    from ..config import exit_code_for

    plan, resolved, report = resolve(req)
    doc: dict[str, Any] = {
        "action": req.action,
        "route": plan.get("route"),
        "plan_warnings": plan.get("warnings", []),
        "valid": report.valid,
        "errors": [e.to_dict() for e in report.errors],
        "warnings": [w.to_dict() for w in report.warnings],
        "launched": False,
    }
    if not report.valid:
        doc["exit_code"] = exit_code_for(report)
        return doc
    from ..jobs.secrets import redact

    doc["spec"] = redact(resolved, use_environment=False)  # printed and returned: an -o encryption_key=... is masked
    if req.action == "train" and plan.get("route") != "direct":
        doc["automl"] = plan.get("automl")
        try:
            from ..automl.launch import launch_automl
        except ImportError:
            doc["exit_code"] = 0 if dry_run else 1
            doc["message"] = "train routes to AutoML (automl_policy on); the local AutoML engine is not installed"
            return doc
        if dry_run:
            doc["exit_code"] = 0
            return doc
        doc.update(launch_automl(resolved, req, wait=wait))
        return doc
    if dry_run:
        doc["exit_code"] = 0
        return doc
    from ..jobs.backend import JobBackend

    backend = JobBackend(req.jobs_root)
    parent = req.parent_job_id or req.convert_job_id
    job_id = backend.create_job(req.action, resolved, parent_job_id=parent, name=req.name, force=req.force)
    doc.update({"launched": True, "job_id": job_id, "results_dir": str(backend.get_job_results_dir(job_id))})
    log(f"{req.action} job {job_id} launched; results in {doc['results_dir']}")
    if wait or follow:
        status = _wait(backend, job_id, follow=follow, timeout=timeout)
        doc["status"] = status
        doc["exit_code"] = 0 if status.get("status") == "Done" else 1
    else:
        doc["exit_code"] = 0
    return doc


def _wait(backend: Any, job_id: str, *, follow: bool, timeout: float | None) -> dict[str, Any]:
    if not follow:
        return backend.wait(job_id, timeout=timeout)
    from ..jobs.status_file import read_events

    seen = 0
    start = time.monotonic()
    while True:
        status = backend.get_job_status(job_id)
        events = read_events(backend.get_job_results_dir(job_id) / "status.json")
        for event in events[seen:]:
            kpi = event.get("kpi") or {}
            log(f"[{job_id[:8]}] {event.get('status', '')} {event.get('message', '')}" + (f" kpi={kpi}" if kpi else ""))
        seen = len(events)
        if status.get("status") in ("Done", "Error", "Canceled"):
            return status
        if timeout is not None and time.monotonic() - start > timeout:
            return status
        time.sleep(1.0)


def launch_main(action: str, argv: list[str]) -> int:
    """Parse ``argv`` for ``action`` and run; returns the exit code."""

    @click.command(name=action, help=f"Launch the Sparse4D {action} action through the local job backend. {EXIT_CODES_HELP}")
    @click.option("-e", "--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Spec YAML (default: the packaged template).")
    @click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable; wins over everything inferred).")
    @click.option("--request", default=None, help="The user's request, verbatim (AutoML phrases are honoured).")
    @click.option("--automl-policy", type=click.Choice(["on", "off"]), default=None, help="Explicit AutoML policy (train only).")
    @click.option("--train-root", default=None, help="AICity root (local or s3://) of the training data.")
    @click.option("--eval-root", default=None, help="AICity root of the evaluation data.")
    @click.option("--inference-root", default=None, help="AICity root of the inference data.")
    @click.option("--calibration-root", default=None, help="Calibration images (quantize).")
    @click.option("--convert-job-id", default=None, help="dataset_convert job whose results to use.")
    @click.option("--convert-dir", default=None, help="dataset_convert results folder (instead of a job id).")
    @click.option("--scene", default=None, help="Converted scene basename when several exist.")
    @click.option("--parent-job-id", default=None, help="Parent job (train job for evaluate/inference/export/quantize).")
    @click.option("--epoch", type=int, default=None, help="Pick the parent's checkpoint of this epoch.")
    @click.option("--step", type=int, default=None, help="Pick the parent's checkpoint of this step.")
    @click.option("--name", default=None, help="Job name.")
    @click.option("--force", is_flag=True, help="Launch even when an identical job exists.")
    @click.option("--jobs-root", default=None, help="Jobs folder (default $SPARSE4D_JOBS_ROOT or ~/.sparse4d/jobs).")
    @click.option("--dry-run", is_flag=True, help="Validate and print the resolved spec; launch nothing.")
    @click.option("--wait", is_flag=True, help="Wait for the job to finish.")
    @click.option("--follow", is_flag=True, help="Wait and stream status events to stderr.")
    @click.option("--timeout", type=float, default=None, help="Seconds to wait at most.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    def command(spec_path, overrides, request, automl_policy, train_root, eval_root, inference_root, calibration_root, convert_job_id, convert_dir, scene, parent_job_id, epoch, step, name, force, jobs_root, dry_run, wait, follow, timeout, as_json) -> None:  # noqa: PLR0913
        given = {"train_root": train_root, "eval_root": eval_root, "inference_root": inference_root, "calibration_root": calibration_root}
        roots = {ROLE_OPTIONS[opt]: value for opt, value in given.items() if value}
        req = LaunchRequest(action, spec_path, list(overrides), request, automl_policy, roots, convert_job_id, convert_dir, scene, parent_job_id, epoch, step, name, force, jobs_root)

        def body() -> int:
            doc = launch(req, dry_run=dry_run, wait=wait, follow=follow, timeout=timeout)
            if as_json:
                emit_json(doc)
            else:
                for w in doc["plan_warnings"]:
                    log(f"note: {w}")
                for w in doc["warnings"]:
                    log(f"warning: {w['key']}: {w['message']}")
                for e in doc["errors"]:
                    log(f"error: {e['key']}: {e['message']}" + (f" ({e['hint']})" if e.get("hint") else ""))
                if dry_run and doc.get("spec"):
                    click.echo(yaml.safe_dump(doc["spec"], sort_keys=False))
                elif doc.get("job_id"):
                    click.echo(doc["job_id"])
                if doc.get("message"):
                    log(doc["message"])
            return int(doc.get("exit_code", 0))

        run_guarded(body, as_json=as_json)

    try:
        command.main(args=argv, prog_name=f"runners/{action}.py", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
