"""``runner job ...``: read and control jobs of the local backend from the shell.

Every command takes ``--json`` (one JSON document on stdout; messages on stderr). Exit codes:
0 ok; 1 the job failed or was canceled (``wait``), or ``wait`` timed out; 2 usage; 4 unknown or
malformed job id. The jobs root is ``--jobs-root`` or ``$SPARSE4D_JOBS_ROOT`` (default
``~/.sparse4d/jobs``).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from ..errors import EXIT_FAILURE, Sparse4DError
from .backend import JobBackend, WaitTimeout
from .store import DONE


def _emit(as_json: bool, document: Any, text: str) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))
    elif text:
        click.echo(text)


def _errors_to_exit(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a Sparse4DError as one clear line (or JSON) and exit with its documented code."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Sparse4DError as exc:
            if kwargs.get("as_json"):
                click.echo(json.dumps({"ok": False, "error": exc.to_dict(), "exit_code": exc.exit_code}))
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return run


def _summary(status: dict[str, Any]) -> str:
    line = f"{status['id']}  {status['action']:<15} {status['status']:<9}"
    if status.get("metric") is not None:
        line += f"  mAP={status['metric']:.4f}"
    if status.get("reason"):
        line += f"  ({status['reason']})"
    return line


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")


@click.group("job")
@click.option("--jobs-root", type=click.Path(file_okay=False), default=None,
              help="Jobs root (default $SPARSE4D_JOBS_ROOT or ~/.sparse4d/jobs).")
@click.pass_context
def job(ctx: click.Context, jobs_root: str | None) -> None:
    """Inspect and control jobs (exit codes: 0 ok, 1 job failed, 2 usage, 4 unknown job id)."""
    ctx.obj = JobBackend(jobs_root)


def _backend() -> JobBackend:
    return click.get_current_context().find_object(JobBackend)


@job.command("status")
@click.argument("job_id")
@json_option
@_errors_to_exit
def status_cmd(job_id: str, as_json: bool) -> None:
    """The job's state, reason, newest status event and metric."""
    status = _backend().get_job_status(job_id)
    _emit(as_json, status, _summary(status))


@job.command("logs")
@click.argument("job_id")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@json_option
@_errors_to_exit
def logs_cmd(job_id: str, tail: int | None, as_json: bool) -> None:
    """The job log (trainer output, secrets masked)."""
    text = _backend().get_job_logs(job_id, tail)
    if as_json:
        _emit(True, {"id": job_id, "log": text}, "")
    else:
        click.echo(text, nl=False)


@job.command("results-dir")
@click.argument("job_id")
@json_option
@_errors_to_exit
def results_dir_cmd(job_id: str, as_json: bool) -> None:
    """The folder the job writes its results into."""
    path = _backend().get_job_results_dir(job_id)
    _emit(as_json, {"id": job_id, "results_dir": str(path)}, str(path))


@job.command("checkpoints")
@click.argument("job_id")
@json_option
@_errors_to_exit
def checkpoints_cmd(job_id: str, as_json: bool) -> None:
    """Checkpoints and exported models in the results folder."""
    backend = _backend()
    names = backend.list_checkpoints(job_id)
    _emit(as_json, {"id": job_id, "results_dir": str(backend.get_job_results_dir(job_id)), "checkpoints": names},
          "\n".join(names))


@job.command("cancel")
@click.argument("job_id")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@json_option
@_errors_to_exit
def cancel_cmd(job_id: str, grace: float, as_json: bool) -> None:
    """Stop a job (a finished job is left as it is)."""
    status = _backend().cancel_job(job_id, grace)
    _emit(as_json, status, _summary(status))


@job.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up after this many seconds.")
@click.option("--poll", type=click.FloatRange(min=0.01), default=0.5, show_default=True)
@click.option("--follow", is_flag=True, help="Print status events to stderr as they arrive.")
@json_option
@_errors_to_exit
def wait_cmd(job_id: str, timeout: float | None, poll: float, follow: bool, as_json: bool) -> None:
    """Wait for the job to finish; exit 0 when Done, 1 when it ended otherwise or timed out."""
    def show(event: dict[str, Any]) -> None:
        click.echo(f"[{event.get('status')}] {event.get('message', '')} {event.get('kpi') or ''}".rstrip(), err=True)

    try:
        status = _backend().wait(job_id, timeout, poll, show if follow else None)
    except WaitTimeout as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "timed_out": True, "error": exc.to_dict(), "exit_code": EXIT_FAILURE}))
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    _emit(as_json, status, _summary(status))
    if status["status"] != DONE:
        sys.exit(EXIT_FAILURE)


@job.command("list")
@json_option
@_errors_to_exit
def list_cmd(as_json: bool) -> None:
    """Every job under the jobs root, oldest first."""
    statuses = _backend().list_jobs()
    _emit(as_json, {"jobs": statuses}, "\n".join(_summary(s) for s in statuses))
