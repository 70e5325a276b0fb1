"""A local job backend with the TAO SDK job surface: create, watch, cancel and read jobs.

``create_job`` writes the record (Pending) and ``spec.yaml`` first, then starts a detached supervisor
(``python -m sparse4d.jobs.supervise <jobdir>``, its own session) that runs
``<trainer> <action> -e <jobdir>/spec.yaml``, streams its output into ``log`` with secrets masked, and
records the final state from the exit code and the last status.json event. The trainer command is
``$SPARSE4D_TRAINER`` (split like a shell line) or ``<python> -m sparse4d.cli.trainer``.

Secrets: the top-level ``encryption_key`` never reaches disk; the trainer gets it as
``$SPARSE4D_ENCRYPTION_KEY`` in its environment. Other secret-looking keys are blanked in spec.yaml.

Duplicates: a launch with the same action, spec (secrets excluded) and parent returns the existing job
while it is Pending, Running, Canceling or Done; a job that ended in Error or Canceled is launched
again as a new job; ``force=True`` always makes a new job.
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import EXIT_FAILURE, Sparse4DError, SpecError
from . import processes
from .secrets import redact, redact_text, split_secrets
from .status_file import latest_metric, read_events
from .store import (
    CANCELED,
    CANCELING,
    ERROR,
    FINISHED,
    LOG_FILE,
    PENDING,
    RUNNING,
    RESULTS_DIR,
    JobStore,
    age_seconds,
    spec_digest,
    status_path,
    validate_job_id,
)

TRAINER_ENV = "SPARSE4D_TRAINER"
# Files list_checkpoints reports (model checkpoints and exported models).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".tlt", ".onnx")
# A launched job whose supervisor never registered within this time is marked Error.
NEVER_STARTED_AFTER_S = 60.0
CANCEL_GRACE_S = 10.0

_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class WaitTimeout(Sparse4DError):
    """``wait`` gave up before the job finished (the job itself keeps running)."""

    exit_code = EXIT_FAILURE


def trainer_command() -> list[str]:
    """The command that runs one action: ``$SPARSE4D_TRAINER`` or ``python -m sparse4d.cli.trainer``."""
    raw = os.environ.get(TRAINER_ENV, "").strip()
    if not raw:
        return [sys.executable, "-m", "sparse4d.cli.trainer"]
    try:
        command = shlex.split(raw)
    except ValueError as exc:
        raise SpecError(f"cannot split {TRAINER_ENV}={raw!r}: {exc}", key=TRAINER_ENV) from None
    return command


def _plain(obj: Any) -> Any:
    """Spec values as YAML/JSON-safe builtins (paths become strings, tuples lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise SpecError(f"spec value {obj!r} of type {type(obj).__name__} cannot be written to YAML",
                    key="specs", hint="use strings, numbers, booleans, lists and mappings")


class JobBackend:
    """Jobs under one jobs root (default ``$SPARSE4D_JOBS_ROOT`` or ``~/.sparse4d/jobs``)."""

    def __init__(self, jobs_root: str | os.PathLike[str] | None = None) -> None:
        self.store = JobStore(jobs_root)

    @property
    def root(self) -> Path:
        return self.store.root

    # ---- create ------------------------------------------------------------------------------
    def create_job(self, action: str, specs: Mapping[str, Any], parent_job_id: str | None = None, *,
                   name: str | None = None, force: bool = False, launch: bool = True) -> str:
        """Record and launch a job; returns its id (an existing id for a duplicate launch)."""
        return self.submit(action, specs, parent_job_id, name=name, force=force, launch=launch)[0]

    def submit(self, action: str, specs: Mapping[str, Any], parent_job_id: str | None = None, *,
               name: str | None = None, force: bool = False, launch: bool = True) -> tuple[str, bool]:
        """Like :meth:`create_job` but returns ``(job_id, created)``; created is False for a duplicate."""
        if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
            raise SpecError(f"invalid action {action!r}", key="action",
                            hint="one of dataset_convert, train, evaluate, inference, export, quantize")
        if not isinstance(specs, Mapping):
            raise SpecError(f"specs must be a mapping, got {type(specs).__name__}", key="specs")
        if parent_job_id is not None:
            validate_job_id(parent_job_id)
            self.store.read(parent_job_id)  # UnknownJobError when the parent does not exist
        spec = _plain(copy.deepcopy(dict(specs)))
        disk_spec, child_env = split_secrets(spec)
        results = disk_spec.get("results_dir") or ""
        if not isinstance(results, str):
            raise SpecError(f"results_dir must be a string, got {results!r}", key="results_dir")
        upload_uri = None
        if results.startswith("s3://"):
            upload_uri, disk_spec["results_dir"] = results, ""  # trainer writes locally; supervisor uploads
        elif results:
            disk_spec["results_dir"] = os.path.abspath(os.path.expanduser(results))
        digest = spec_digest(action, {**disk_spec, "results_dir": results}, parent_job_id)
        command = trainer_command()

        def make_record(job_id: str, folder: Path) -> dict[str, Any]:
            return {
                "cwd": os.getcwd(),
                "command": [*command, action, "-e", str(folder / "spec.yaml")],
                "launch_requested": launch,
                "results_upload_uri": upload_uri,
                "supervisor": None,
                "trainer": None,
                "exit_code": None,
                "reason": None,
                "started_at": None,
                "finished_at": None,
            }

        job_id, created = self.store.create(action=action, spec_for_disk=disk_spec, digest=digest,
                                            parent_job_id=parent_job_id, name=name, force=force,
                                            make_record=make_record)
        if created and launch:
            self._launch(job_id, child_env)
        elif launch:  # a duplicate whose launcher died after recording it: start it now (no-op otherwise)
            self.launch(job_id, child_env)
        return job_id, created

    def launch(self, job_id: str, child_env: Mapping[str, str] | None = None) -> None:
        """Start a Pending job that has no supervisor yet (created with ``launch=False``, or whose
        launcher died before starting it). Two racing launches are safe: the supervisor that takes the
        job lock first runs the trainer, the other finds the job no longer Pending and exits."""
        record = self.store.read(job_id)
        if record["status"] != PENDING or record.get("supervisor"):
            return
        self.store.update(job_id, lambda rec: {**rec, "launch_requested": True})
        self._launch(job_id, dict(child_env or {}))

    def _launch(self, job_id: str, child_env: Mapping[str, str]) -> None:
        folder = self.store.job_dir(job_id)
        env = dict(os.environ)
        env.update(child_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
        record = self.store.read(job_id)
        try:
            with open(folder / LOG_FILE, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "sparse4d.jobs.supervise", str(folder)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=env, cwd=record.get("cwd") or None, close_fds=True,
                )
        except OSError as exc:
            self.store.transition(job_id, ERROR, reason=f"could not start the job supervisor: {exc}")
            return
        # Reap the supervisor when it exits so it never lingers as a zombie of a long-lived client.
        threading.Thread(target=proc.wait, name=f"reap-{job_id[:8]}", daemon=True).start()
        ident = processes.identity(proc.pid)

        def remember(rec: dict[str, Any]) -> dict[str, Any]:
            rec["supervisor"] = rec.get("supervisor") or ident
            return rec

        self.store.update(job_id, remember)

    # ---- status ------------------------------------------------------------------------------
    def _refresh(self, job_id: str) -> dict[str, Any]:
        """The record, after marking a job whose supervisor is gone (Error, or Canceled if canceling)."""
        record = self.store.read(job_id)
        if record["status"] in FINISHED or not self._looks_orphaned(record):
            return record

        def settle(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["status"] in FINISHED or not self._looks_orphaned(rec):
                return rec  # the supervisor finished (or registered) while we took the lock
            processes.signal_group(rec.get("trainer"), signal.SIGKILL)
            if rec["status"] == CANCELING:
                rec.update(status=CANCELED, reason=rec.get("reason") or "canceled")
            elif rec.get("supervisor"):
                rec.update(status=ERROR, reason=(
                    f"the job supervisor (pid {rec['supervisor'].get('pid')}) exited without recording a "
                    "final state (killed or crashed); see the log"))
            else:
                rec.update(status=ERROR, reason=f"the job never started within {NEVER_STARTED_AFTER_S:.0f} s")
            return rec

        return self.store.update(job_id, settle)

    @staticmethod
    def _looks_orphaned(record: Mapping[str, Any]) -> bool:
        supervisor = record.get("supervisor")
        if supervisor:
            return not processes.is_alive(supervisor)
        if record["status"] == CANCELING and not record.get("launch_requested"):
            return True
        return bool(record.get("launch_requested")) and age_seconds(record.get("created_at")) > NEVER_STARTED_AFTER_S

    def _status_path(self, job_id: str) -> Path:
        return status_path(self.store.job_dir(job_id), self.store.read(job_id).get("results_dir"))

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        """The job record plus ``last_event`` (newest status.json event) and ``metric`` (mAP or None)."""
        record = self._refresh(job_id)
        events = read_events(self._status_path(job_id))
        status = dict(record)
        status["last_event"] = redact(events[-1]) if events else None
        status["metric"] = latest_metric(events)
        status["finished"] = record["status"] in FINISHED
        return redact(status, use_environment=False)

    def get_job_logs(self, job_id: str, tail: int | None = None) -> str:
        """The job log (secrets masked); `tail` keeps only the last lines."""
        path = self.store.path(job_id, LOG_FILE)
        self.store.read(job_id)
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        if tail is not None:
            if tail < 0:
                raise SpecError(f"tail must be >= 0, got {tail}", key="tail")
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail else ""
        return redact_text(text)

    def get_job_results_dir(self, job_id: str) -> Path:
        """The folder the trainer writes into (``<jobdir>/results`` unless the spec named another)."""
        record = self.store.read(job_id)
        return Path(record.get("results_dir") or self.store.path(job_id, RESULTS_DIR))

    def list_checkpoints(self, job_id: str) -> list[str]:
        """Checkpoints and exported models in the results folder, as sorted relative paths.

        Symlinks that lead outside the results folder are skipped: a job can only offer its own files.
        """
        results = self.get_job_results_dir(job_id)
        if not results.is_dir():
            return []
        base = results.resolve()
        found = []
        for path in results.rglob("*"):
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                continue
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not real.is_file() or not real.is_relative_to(base):
                continue
            found.append(path.relative_to(results).as_posix())
        return sorted(found)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job's record (refreshed), oldest first."""
        out = []
        for record in self.store.list():
            try:
                out.append(self.get_job_status(record["id"]))
            except Sparse4DError:
                continue
        return out

    # ---- control -----------------------------------------------------------------------------
    def cancel_job(self, job_id: str, grace: float = CANCEL_GRACE_S) -> dict[str, Any]:
        """Stop a job: Canceling, SIGTERM to the trainer's group, SIGKILL after `grace` s, Canceled.

        A finished job is left as it is. Returns the status afterwards.
        """
        record = self._refresh(job_id)
        if record["status"] in FINISHED:
            return self.get_job_status(job_id)

        def request(rec: dict[str, Any]) -> dict[str, Any]:
            if rec["status"] in (PENDING, RUNNING):
                rec.update(status=CANCELING, reason="canceled by request")
            return rec

        record = self.store.update(job_id, request)
        if record["status"] in FINISHED:
            return self.get_job_status(job_id)
        if not record.get("launch_requested") and not record.get("supervisor"):
            self.store.transition(job_id, CANCELED, reason="canceled before launch")
            return self.get_job_status(job_id)
        processes.signal_group(record.get("trainer"), signal.SIGTERM)
        if self._wait_finished(job_id, grace):
            return self.get_job_status(job_id)
        record = self.store.read(job_id)
        processes.signal_group(record.get("trainer"), signal.SIGKILL)
        if self._wait_finished(job_id, 5.0):
            return self.get_job_status(job_id)
        # The supervisor did not record the end (hung or gone): stop it and record it here.
        record = self.store.read(job_id)
        processes.signal_group(record.get("trainer"), signal.SIGKILL)
        processes.signal_group(record.get("supervisor"), signal.SIGKILL)
        self.store.transition(job_id, CANCELED, reason="canceled (forced after SIGKILL)")
        return self.get_job_status(job_id)

    def _wait_finished(self, job_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self._refresh(job_id)["status"] in FINISHED:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Block until the job is finished and return its final status.

        `on_event` receives each new status.json event as it appears (for ``--follow``). Raises
        WaitTimeout after `timeout` seconds; the job keeps running.
        """
        validate_job_id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            status = self.get_job_status(job_id)
            if on_event is not None:
                events = read_events(self._status_path(job_id))
                for event in events[seen:]:
                    on_event(redact(event))
                seen = max(seen, len(events))
            if status["finished"]:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {status['status']} after {timeout} s", key="job_id",
                                  hint="wait again later, or cancel it with `runner job cancel`")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))


# ---- module-level convenience: the default jobs root, read at call time ----------------------
def create_job(action: str, specs: Mapping[str, Any], parent_job_id: str | None = None, *,
               name: str | None = None, force: bool = False, jobs_root: str | os.PathLike[str] | None = None,
               launch: bool = True) -> str:
    return JobBackend(jobs_root).create_job(action, specs, parent_job_id, name=name, force=force, launch=launch)


def get_job_status(job_id: str, *, jobs_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    return JobBackend(jobs_root).get_job_status(job_id)


def get_job_logs(job_id: str, tail: int | None = None, *, jobs_root: str | os.PathLike[str] | None = None) -> str:
    return JobBackend(jobs_root).get_job_logs(job_id, tail)


def get_job_results_dir(job_id: str, *, jobs_root: str | os.PathLike[str] | None = None) -> Path:
    return JobBackend(jobs_root).get_job_results_dir(job_id)


def list_checkpoints(job_id: str, *, jobs_root: str | os.PathLike[str] | None = None) -> list[str]:
    return JobBackend(jobs_root).list_checkpoints(job_id)


def cancel_job(job_id: str, *, grace: float = CANCEL_GRACE_S,
               jobs_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    return JobBackend(jobs_root).cancel_job(job_id, grace)


def wait(job_id: str, timeout: float | None = None, poll: float = 0.5, *,
         on_event: Callable[[dict[str, Any]], None] | None = None,
         jobs_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    return JobBackend(jobs_root).wait(job_id, timeout, poll, on_event)


__all__ = [
    "CHECKPOINT_SUFFIXES", "TRAINER_ENV", "JobBackend", "WaitTimeout", "cancel_job", "create_job",
    "get_job_logs", "get_job_results_dir", "get_job_status", "list_checkpoints", "trainer_command", "wait",
]
