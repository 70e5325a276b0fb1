"""`runner policy` and `runner plan`: the skill layer on the command line (mounted by sparse4d.cli.runner).

With ``--json`` each prints exactly one JSON document on stdout (errors too: ``{"ok": false, ...}``);
logs go to stderr. Exit codes: 0 ok (a plan with status ``needs_dataset_convert`` is ok: it tells you
what to run first), 2 usage, 3 invalid request or spec (also: the request is about another model),
4 missing data or file, 6 storage.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from sparse4d.errors import EXIT_FAILURE, EXIT_INVALID_SPEC, Sparse4DError

from .data_sources import ACTIONS
from .plan import make_plan
from .policy import resolve_automl_policy

EXIT_CODES = "Exit codes: 0 ok, 2 usage, 3 invalid request/spec, 4 missing data or file, 6 storage."


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, allow_nan=False, default=str))


def _run(body: Callable[[], tuple[dict[str, Any], int]], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    try:
        document, code = body()
    except Sparse4DError as exc:
        if as_json:
            _emit({"ok": False, "error": exc.to_dict(), "exit_code": exc.exit_code})
        else:
            click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, for the agent reading stdout
        message = f"internal error: {type(exc).__name__}: {exc}"
        if as_json:
            _emit({"ok": False, "error": {"key": None, "message": message, "hint": None}, "exit_code": EXIT_FAILURE})
        else:
            click.echo(message, err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        _emit(document)
    else:
        click.echo(human(document))
    for warning in document.get("warnings", []) or []:
        click.echo(f"warning: {warning}", err=True)
    sys.exit(code)


_policy_choice = click.Choice(["on", "off"], case_sensitive=False)


@click.command("policy", help=f"Resolve the AutoML policy of one run. {EXIT_CODES}")
@click.option("--request", default=None, help="The user's request, verbatim.")
@click.option("--automl-policy", "automl_policy", type=_policy_choice, default=None, help="Explicit policy (wins).")
@click.option("--action", type=click.Choice(ACTIONS), default="train", show_default=True)
@click.option("--skill-dir", default=None, help="Plugin root with schemas/ and references/ (default: this package).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def policy(request: str | None, automl_policy: str | None, action: str, skill_dir: str | None, as_json: bool) -> None:
    def body() -> tuple[dict[str, Any], int]:
        decision = resolve_automl_policy(request, automl_policy, action=action, skill_dir=skill_dir)
        return {"ok": True, **decision.to_dict()}, 0

    def human(doc: dict[str, Any]) -> str:
        text = f"automl_policy: {doc['policy']} ({doc['source']}); route: {doc['route']}"
        return text + (f"\n{doc['report']}" if doc.get("report") else "")

    _run(body, as_json, human)


@click.command("plan", help=f"Plan ACTION for a request: route, overrides, inferred spec params. {EXIT_CODES}")
@click.argument("action", type=click.Choice(ACTIONS))
@click.option("--request", default=None, help="The user's request, verbatim.")
@click.option("--train-root", default=None, help="AICity root of the training data (local or s3://).")
@click.option("--eval-root", default=None, help="AICity root of the evaluation data.")
@click.option("--inference-root", default=None, help="AICity root of the inference data (default: --eval-root).")
@click.option("--calibration-root", default=None, help="Calibration images for quantize (default: --train-root).")
@click.option("--convert-job-id", default=None, help="Finished dataset_convert job whose results to use.")
@click.option("--convert-dir", default=None, help="dataset_convert results folder or s3:// prefix.")
@click.option("--scene", default=None, help="Converted scene basename when the results hold several.")
@click.option("--parent-job-id", default=None, help="Job whose checkpoint/model this action uses.")
@click.option("--parent-dir", default=None, help="Results folder to take the parent model from (instead of a job).")
@click.option("--epoch", type=click.IntRange(min=0), default=None, help="Exact checkpoint epoch.")
@click.option("--step", type=click.IntRange(min=0), default=None, help="Exact checkpoint step.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Spec override (repeatable; wins).")
@click.option("--automl-policy", "automl_policy", type=_policy_choice, default=None, help="Explicit policy (wins).")
@click.option("--skill-dir", default=None, help="Plugin root with schemas/ and references/.")
@click.option("--jobs-root", default=None, help="Jobs root (default: $SPARSE4D_JOBS_ROOT or ~/.sparse4d/jobs).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def plan(action: str, request: str | None, train_root: str | None, eval_root: str | None,
         inference_root: str | None, calibration_root: str | None, convert_job_id: str | None,
         convert_dir: str | None, scene: str | None, parent_job_id: str | None, parent_dir: str | None,
         epoch: int | None, step: int | None, overrides: tuple[str, ...], automl_policy: str | None,
         skill_dir: str | None, jobs_root: str | None, as_json: bool) -> None:
    roots = {"train_datasets": train_root, "eval_dataset": eval_root, "inference_dataset": inference_root,
             "calibration_dataset": calibration_root}

    def body() -> tuple[dict[str, Any], int]:
        document = make_plan(
            action, request, roots={k: v for k, v in roots.items() if v}, convert_dir=convert_dir,
            convert_job_id=convert_job_id, parent_job_id=parent_job_id, parent_dir=parent_dir, epoch=epoch,
            step=step, scene=scene, overrides=list(overrides), automl_policy=automl_policy,
            skill_dir=skill_dir, jobs_root=jobs_root,
        )
        # An -o encryption_key=... (or any secret-looking key) is echoed in the plan: mask its value
        # everywhere (command line, spec_overrides, spec_params) before the plan is printed.
        from sparse4d.jobs.secrets import is_secret_key, redact

        secrets = [value for key, _, value in (o.partition("=") for o in overrides) if is_secret_key(key.strip()) and value.strip()]
        document = redact(document, [s.strip().strip("'\"") for s in secrets] + secrets, use_environment=False)
        return document, (EXIT_INVALID_SPEC if document["status"] == "not_this_skill" else 0)

    def human(doc: dict[str, Any]) -> str:
        lines = [f"{doc['action']}: {doc['status']}"]
        if doc["status"] == "not_this_skill":
            return lines[0] + f" ({doc['reason']})"
        lines.append(f"route: {doc['route']}")
        if doc.get("message"):
            lines.append(doc["message"])
        lines += [f"  {k}={v}" for k, v in doc.get("spec_overrides", {}).items()]
        lines += [f"  {p['key']} <- {p['function']}: {p.get('value')}" for p in doc.get("spec_params", [])]
        return "\n".join(lines)

    _run(body, as_json, human)
