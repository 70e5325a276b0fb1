"""`runner automl start|status|stop|best`: run and inspect AutoML studies over train jobs.

Every command takes ``--json`` (one JSON document on stdout; progress on stderr). Exit codes:
0 ok (start: the study finished, or the controller was detached), 1 failed (no trial finished, a
controller is already running, no finished trial for ``best``), 2 usage, 3 invalid spec, option or
searched parameter, 4 a named file or job does not exist.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from ..cli.common import EXIT_CODES_HELP, emit_json, log, run_guarded
from ..config.loading import parse_override, read_spec_file
from ..errors import EXIT_FAILURE
from ..jobs.backend import JobBackend
from .rungs import ALGORITHMS

_COMMON = [
    click.option("--study", "study_name", required=True, help="Study name (also names the journal file)."),
    click.option("--storage", default=None,
                 help="Optuna storage: an RDB URL (sqlite:///x.db, postgresql://...) shared by hosts, or a journal "
                      "file path. Default: <jobs-root>/automl/<study>.journal."),
    click.option("--jobs-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Job backend root (default $SPARSE4D_JOBS_ROOT or ~/.sparse4d/jobs)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout."),
]


def common_options(fn):
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def _open(study_name: str, storage: str | None, jobs_root: Path | None):
    from .study import open_storage  # optuna loads only when a study command runs
    backend = JobBackend(jobs_root)
    return backend, open_storage(storage, backend.root, study_name)


def _print_summary(doc: dict[str, Any]) -> None:
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(doc["counts"].items())) or "no trials"
    click.echo(f"study {doc['study']} ({doc['algorithm']}): {counts}; finished: {doc['finished']}")
    for trial in doc["trials"]:
        runs = "; ".join(f"rung {r['rung']} {r['epochs']}ep job {r['job_id']} mAP {r['metric']}" for r in trial["runs"])
        reason = f" ({trial['fail_reason']})" if trial["fail_reason"] else ""
        click.echo(f"  trial {trial['number']}: {trial['state']} value={trial['value']}{reason} {runs}")
    if doc["best"]:
        best = doc["best"]
        click.echo(f"best: trial {best['trial']} val_mAP {best['value']:.4f} job {best['job_id']} checkpoint {best['checkpoint']}")


@click.group(help=f"AutoML over train jobs (Bayesian/TPE, ASHA, Hyperband, BOHB). {EXIT_CODES_HELP}")
def automl() -> None:
    pass


@automl.command(help="Start a study from SPEC (or continue --study without SPEC) and run it to the end.")
@click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Spec override kept in every trial (data sources, output dirs, GPUs, parent checkpoints).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="asha", show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY", help="Search this key too (schema bounds apply).")
@click.option("--no-default-params", is_flag=True, help="Search only --param keys, not automl_default_parameters.")
@click.option("--max-trials", type=int, default=8, show_default=True)
@click.option("--max-epochs", type=int, default=0, help="Epochs of a fully trained trial (default: train.num_epochs).")
@click.option("--min-epochs", type=int, default=0, help="First rung's epochs (default: from --rungs).")
@click.option("--rungs", type=int, default=3, show_default=True, help="Rungs of successive halving.")
@click.option("--reduction-factor", type=int, default=3, show_default=True)
@click.option("--parallel", type=int, default=1, show_default=True, help="Trials running at once.")
@click.option("--seed", type=int, default=None)
@click.option("--parent-job-id", default=None, help="Parent job of every first-rung job (e.g. a pretrained model).")
@click.option("--schema", "schema_path", default=None, help="Train schema (default: the packaged one).")
@click.option("--verify-load/--no-verify-load", default=True, show_default=True,
              help="Check that promoted checkpoints load with torch (in a child process).")
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between job polls.")
@click.option("--detach", is_flag=True, help="Run the controller in the background and return at once.")
@common_options
def start(spec: Path | None, overrides: tuple[str, ...], algorithm: str, params: tuple[str, ...],
          no_default_params: bool, max_trials: int, max_epochs: int, min_epochs: int, rungs: int,
          reduction_factor: int, parallel: int, seed: int | None, parent_job_id: str | None,
          schema_path: str | None, verify_load: bool, poll: float, detach: bool, study_name: str,
          storage: str | None, jobs_root: Path | None, as_json: bool) -> None:
    def body() -> int:
        from .study import Controller, StudyConfig, create_or_load_study  # optuna loads only when a study command runs
        backend, store = _open(study_name, storage, jobs_root)
        config = None
        if spec is not None:
            config = StudyConfig(
                study=study_name, spec=read_spec_file(spec), overrides=dict(parse_override(o) for o in overrides),
                algorithm=algorithm, params=list(params), include_defaults=not no_default_params,
                max_trials=max_trials, max_epochs=max_epochs, min_epochs=min_epochs, rungs=rungs,
                reduction_factor=reduction_factor, parallel=parallel, seed=seed, parent_job_id=parent_job_id,
                schema_path=schema_path, verify_load=verify_load)
        study, resolved = create_or_load_study(store, config, study_name)
        if detach:
            return _detach(study_name, storage, backend, poll, as_json)
        controller = Controller(study, resolved, backend, poll=poll, log=log)
        doc = controller.run()
        doc["launched_jobs"] = controller.launched
        doc["reattached_jobs"] = controller.reattached
        if as_json:
            emit_json(doc)
        else:
            _print_summary(doc)
        return 0 if doc["best"] is not None or doc["stop_requested"] else EXIT_FAILURE

    run_guarded(body, as_json=as_json)


def detach_controller(study_name: str, storage: str | None, backend: JobBackend, poll: float) -> dict[str, Any]:
    """Start the study's controller as a background process; returns its pid and log path."""
    from .study import automl_dir  # optuna loads only when a study command runs
    log_path = automl_dir(backend.root) / f"{study_name}.controller.log"
    command = [sys.executable, "-m", "sparse4d.automl.cli", "start", "--study", study_name,
               "--jobs-root", str(backend.root), "--poll", str(poll)]
    if storage:
        command += ["--storage", storage]
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    return {"study": study_name, "detached": True, "pid": proc.pid, "log": str(log_path)}


def _detach(study_name: str, storage: str | None, backend: JobBackend, poll: float, as_json: bool) -> int:
    doc = detach_controller(study_name, storage, backend, poll)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"controller pid {doc['pid']} running study {study_name}; log {doc['log']}")
    return 0


@automl.command(help="Show a study's trials, their rung jobs and the best trial so far.")
@common_options
def status(study_name: str, storage: str | None, jobs_root: Path | None, as_json: bool) -> None:
    def body() -> int:
        from .study import load_study, study_summary  # optuna loads only when a study command runs
        backend, store = _open(study_name, storage, jobs_root)
        study, config = load_study(store, study_name)
        doc = study_summary(study, config, backend)
        emit_json(doc) if as_json else _print_summary(doc)
        return 0

    run_guarded(body, as_json=as_json)


@automl.command(help="Stop a study: the controller cancels its running trial jobs and exits.")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the controller to exit before canceling its jobs directly.")
@common_options
def stop(wait_s: float, study_name: str, storage: str | None, jobs_root: Path | None, as_json: bool) -> None:
    def body() -> int:
        from .study import load_study, request_stop  # optuna loads only when a study command runs
        backend, store = _open(study_name, storage, jobs_root)
        study, _ = load_study(store, study_name)
        doc = request_stop(study, backend, wait_s=wait_s)
        doc["study"] = study_name
        if as_json:
            emit_json(doc)
        else:
            click.echo(f"stop requested; controller alive: {doc['controller_alive']}; canceled {len(doc['canceled_jobs'])} jobs")
        return 0

    run_guarded(body, as_json=as_json)


@automl.command(help="The best finished trial: the job id to pass as parent_job_id to evaluate/export, and its checkpoint.")
@common_options
def best(study_name: str, storage: str | None, jobs_root: Path | None, as_json: bool) -> None:
    def body() -> int:
        from .study import best_trial, load_study  # optuna loads only when a study command runs
        _, store = _open(study_name, storage, jobs_root)
        study, _ = load_study(store, study_name)
        doc = best_trial(study)
        if as_json:
            emit_json(doc)
        else:
            click.echo(f"trial {doc['trial']} val_mAP {doc['value']:.4f} ({doc['metric_source']}): job {doc['job_id']} "
                       f"checkpoint {doc['checkpoint']}")
        return 0

    run_guarded(body, as_json=as_json)


if __name__ == "__main__":
    automl(prog_name="runner automl")
