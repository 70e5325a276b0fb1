"""The job supervisor: ``python -m sparse4d.jobs.supervise <jobdir>``.

Runs the trainer command from job.json in its own session, copies its output into ``log`` with secrets
masked, and records the final state: Done when it exits 0 and the last status.json event is not
FAILURE, Error otherwise (with the reason), Canceled when a cancel was requested. Results are uploaded
first when the job's results root is on S3. SIGTERM/SIGINT to the supervisor are passed on to the
trainer's process group, so the end is still recorded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import Sparse4DError
from . import processes
from .secrets import environment_secrets, redact_text
from .status_file import FAILURE, STATUS_FILE_ENV, last_status, read_events
from .store import (
    CANCELED,
    CANCELING,
    DONE,
    ERROR,
    FINISHED,
    LOG_FILE,
    PENDING,
    RUNNING,
    STATUS_FILE,
    JobStore,
    now_iso,
    status_path,
    validate_job_id,
)


class _Log:
    """Appends lines to the job log with every secret masked."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.secrets = environment_secrets()

    def write_raw(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="surrogateescape")
        self.handle.write(redact_text(text, self.secrets).encode("utf-8", errors="surrogateescape"))
        self.handle.flush()

    def note(self, message: str) -> None:
        self.write_raw(f"[supervisor {time.strftime('%H:%M:%S')}] {message}\n".encode())


def _describe_failure(returncode: int, events: list[dict[str, Any]], upload_error: str | None) -> str:
    parts = []
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        parts.append(f"trainer killed by {name}")
    elif returncode > 0:
        parts.append(f"trainer exited with code {returncode}")
    if events and events[-1].get("status") == FAILURE:
        parts.append(f"status.json: {events[-1].get('message') or 'FAILURE'}")
    if upload_error:
        parts.append(f"results upload failed: {upload_error}")
    return "; ".join(parts) or "failed"


def run(jobdir: Path) -> int:
    store = JobStore(jobdir.parent)
    job_id = validate_job_id(jobdir.name)
    with open(jobdir / LOG_FILE, "ab") as handle:
        log = _Log(handle)
        trainer: subprocess.Popen[bytes] | None = None

        def forward(signum: int, _frame: Any) -> None:
            if trainer is not None and trainer.poll() is None:
                os.killpg(trainer.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        with store.locked(job_id):
            record = store.read(job_id)
            if record["status"] == CANCELING:
                store.update_locked(job_id, lambda r: {**r, "status": CANCELED, "reason": "canceled before start"})
                log.note("canceled before start")
                return 0
            if record["status"] != PENDING:
                log.note(f"job is {record['status']}; nothing to run")
                return 0
            command = [str(part) for part in record["command"]]
            log.note(f"starting: {' '.join(command)}")
            try:
                trainer = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=record.get("cwd") or None, close_fds=True,
                    env={**os.environ, STATUS_FILE_ENV: str(jobdir / STATUS_FILE)},
                )
            except OSError as exc:
                reason = f"could not start the trainer {command[0]!r}: {exc}"
                store.update_locked(job_id, lambda r: {**r, "status": ERROR, "reason": reason})
                log.note(reason)
                return 1
            ident = processes.identity(trainer.pid)
            store.update_locked(job_id, lambda r: {
                **r, "status": RUNNING, "started_at": now_iso(), "trainer": ident,
                "supervisor": processes.identity(os.getpid()),  # the one running the trainer, even after a racing launch
            })

        assert trainer.stdout is not None
        for line in iter(trainer.stdout.readline, b""):
            log.write_raw(line)
        returncode = trainer.wait()
        events = read_events(status_path(jobdir, record.get("results_dir")))
        log.note(f"trainer exited with code {returncode}")

        record = store.read(job_id)
        succeeded = returncode == 0 and last_status(events) != FAILURE
        upload_error = None
        if succeeded and record.get("results_upload_uri") and record["status"] == RUNNING:
            upload_error = _upload_results(record, log)
            succeeded = upload_error is None

        with store.locked(job_id):
            record = store.read(job_id)
            if record["status"] in FINISHED:
                return 0
            if record["status"] == CANCELING:
                final = {"status": CANCELED, "exit_code": returncode}
            elif succeeded:
                final = {"status": DONE, "exit_code": returncode, "reason": None}
            else:
                final = {"status": ERROR, "exit_code": returncode,
                         "reason": _describe_failure(returncode, events, upload_error)}
            store.update_locked(job_id, lambda r: {**r, **final})
            log.note(f"job {final['status']}" + (f": {final.get('reason')}" if final.get("reason") else ""))
    return 0


def _upload_results(record: dict[str, Any], log: _Log) -> str | None:
    from .storage import upload_dir  # boto3 only when results go to S3

    try:
        keys = upload_dir(record["results_dir"], record["results_upload_uri"])
    except Sparse4DError as exc:
        log.note(f"results upload failed: {exc}")
        return str(exc)
    log.note(f"uploaded {len(keys)} result files to {record['results_upload_uri']}")
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sparse4d.jobs.supervise JOBDIR", file=sys.stderr)
        return 2
    try:
        return run(Path(args[0]).resolve())
    except Sparse4DError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
