"""The job store: one folder per job, records that only move forward, safe under many processes.

Layout under the jobs root (``$SPARSE4D_JOBS_ROOT``, default ``~/.sparse4d/jobs``)::

    <root>/.lock                  creation lock (dedup check + new folder are one step)
    <root>/.index/<digest>        id of the newest job for one (action, spec, parent)
    <root>/<id>/job.json          the record (written before launch, state Pending)
    <root>/<id>/.lock             per-job lock: every read-modify-write of job.json holds it
    <root>/<id>/spec.yaml         the spec the trainer reads (secrets blanked)
    <root>/<id>/status.json       trainer events (see status_file)
    <root>/<id>/log               trainer stdout+stderr (secrets masked)
    <root>/<id>/results/          everything the job writes

States: Pending -> Running -> Done | Error; Pending/Running -> Canceling -> Canceled. Done, Error and
Canceled are final: a transition out of them is refused, so a late writer (a slow supervisor, a
second cancel) can never rewrite history. Every write is atomic (tmp + os.replace) and locked.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError, InputFileError
from .fileio import atomic_write_json, atomic_write_text, file_lock
from .secrets import redact

ROOT_ENV = "SPARSE4D_JOBS_ROOT"
DEFAULT_ROOT = Path("~/.sparse4d/jobs")

PENDING, RUNNING, DONE, ERROR, CANCELING, CANCELED = "Pending", "Running", "Done", "Error", "Canceling", "Canceled"
STATES = (PENDING, RUNNING, DONE, ERROR, CANCELING, CANCELED)
FINISHED = frozenset({DONE, ERROR, CANCELED})
# Finished jobs in these states may be launched again by a duplicate create_job; Done jobs are reused.
RELAUNCHABLE = frozenset({ERROR, CANCELED})
_ALLOWED = {
    PENDING: {RUNNING, ERROR, CANCELING, CANCELED},
    RUNNING: {DONE, ERROR, CANCELING},
    CANCELING: {CANCELED},
}

# Generated ids are uuid4 hex; user-visible names never become folder names.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

JOB_FILE, SPEC_FILE, STATUS_FILE, LOG_FILE, RESULTS_DIR, LOCK_FILE = (
    "job.json", "spec.yaml", "status.json", "log", "results", ".lock")


class UnknownJobError(InputFileError):
    """The job id is malformed or names no job in this jobs root (exit code 4)."""


class StateError(DataError):
    """A state change the lifecycle forbids (leaving a finished state)."""


def default_jobs_root() -> Path:
    """``$SPARSE4D_JOBS_ROOT`` when set, else ``~/.sparse4d/jobs``."""
    raw = os.environ.get(ROOT_ENV, "").strip()
    return Path(raw).expanduser() if raw else DEFAULT_ROOT.expanduser()


def validate_job_id(job_id: Any) -> str:
    """Return `job_id` when it is a safe folder name; refuse path escapes with a clear error."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        shown = job_id if isinstance(job_id, str) and len(job_id) <= 80 else f"{str(job_id)[:80]}..."
        raise UnknownJobError(
            f"invalid job id {shown!r}",
            key="job_id",
            hint="job ids are letters, digits, '-' and '_' (no '/', no '..'); use the id create_job printed",
        )
    return job_id


def status_path(job_dir: Path, results_dir: str | None = None) -> Path:
    """``<jobdir>/status.json``, or ``<results_dir>/status.json`` when only the trainer's own exists."""
    primary = job_dir / STATUS_FILE
    if not primary.exists() and results_dir:
        fallback = Path(results_dir) / STATUS_FILE
        if fallback.is_file():
            return fallback
    return primary


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def age_seconds(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 0.0


def spec_digest(action: str, spec: Mapping[str, Any], parent_job_id: str | None) -> str:
    """Identity of a launch: the same action, canonical spec and parent give the same digest."""
    canonical = json.dumps({"action": action, "parent_job_id": parent_job_id, "spec": spec},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JobStore:
    """Records and folders of jobs under one root; no processes are started here."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_jobs_root()

    # ---- paths -------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.root / validate_job_id(job_id)

    def path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / name

    def _ensure_root(self) -> None:
        (self.root / ".index").mkdir(parents=True, exist_ok=True)

    # ---- reading -----------------------------------------------------------------------------
    def exists(self, job_id: str) -> bool:
        return self.path(job_id, JOB_FILE).is_file()

    def read(self, job_id: str) -> dict[str, Any]:
        """The job record; UnknownJobError when there is no such job."""
        path = self.path(job_id, JOB_FILE)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownJobError(f"no job {job_id!r} under {self.root}", key="job_id",
                                  hint=f"list jobs with `runner job list`, or set {ROOT_ENV}") from None
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise DataError(f"job record {path} is not valid JSON ({exc})", key="job_id") from None
        if not isinstance(record, dict) or record.get("status") not in STATES:
            raise DataError(f"job record {path} has no valid status", key="job_id")
        return record

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if JOB_ID_RE.fullmatch(p.name) and (p / JOB_FILE).is_file())

    def list(self) -> list[dict[str, Any]]:
        """All readable records, oldest first."""
        records = []
        for job_id in self.list_ids():
            with contextlib.suppress(UnknownJobError, DataError):
                records.append(self.read(job_id))
        return sorted(records, key=lambda r: (r.get("created_at") or "", r.get("id") or ""))

    # ---- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the job's lock: use around every read-modify-write of its record."""
        lock = self.path(job_id, LOCK_FILE)
        if not lock.parent.is_dir():
            self.read(job_id)  # raises UnknownJobError
        with file_lock(lock):
            yield

    def _write(self, job_id: str, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.path(job_id, JOB_FILE), redact(dict(record), use_environment=False))

    def update(self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply `change` to the record under the job lock and write the result atomically.

        `change` edits the record in place (or returns a new one). A status change is checked
        against the lifecycle: leaving a finished state raises StateError and nothing is written.
        """
        with self.locked(job_id):
            return self.update_locked(job_id, change)

    def update_locked(self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """:meth:`update` for a caller that already holds :meth:`locked` (flock does not nest)."""
        before = self.read(job_id)
        after = change(json.loads(json.dumps(before)))
        if after is None:
            raise TypeError("change must return the record or edit it in place and return it")
        old, new = before["status"], after.get("status")
        if new != old:
            check_transition(old, new)
            after.setdefault("history", []).append({"status": new, "at": now_iso(), "reason": after.get("reason")})
            if new in FINISHED:
                after["finished_at"] = now_iso()
        after["updated_at"] = now_iso()
        self._write(job_id, after)
        return after

    def transition(self, job_id: str, new_status: str, *, only_from: frozenset[str] | set[str] | None = None,
                   **fields: Any) -> dict[str, Any]:
        """Move a job to `new_status` (setting `fields`) unless it is finished or not in `only_from`.

        Returns the record as stored afterwards; a refused move leaves it unchanged (no error), so
        racing writers (supervisor vs. cancel) simply lose to whoever finished first.
        """
        with self.locked(job_id):
            record = self.read(job_id)
            if record["status"] in FINISHED or (only_from is not None and record["status"] not in only_from):
                return record
            if new_status not in _ALLOWED.get(record["status"], set()) and new_status != record["status"]:
                return record

            def apply(rec: dict[str, Any]) -> dict[str, Any]:
                rec.update(fields)
                rec["status"] = new_status
                return rec

            return self.update_locked(job_id, apply)

    def create(
        self,
        *,
        action: str,
        spec_for_disk: Mapping[str, Any],
        digest: str,
        parent_job_id: str | None,
        name: str | None,
        force: bool,
        make_record: Callable[[str, Path], dict[str, Any]],
    ) -> tuple[str, bool]:
        """Create a Pending job, or return the existing one for the same `digest`.

        Returns ``(job_id, created)``. Holding the root lock makes "look up duplicate, then create"
        one step for every process sharing this root. The record is complete on disk before the
        index points at it, so a crash in between leaves at worst an unindexed Pending job.
        """
        self._ensure_root()
        pointer = self.root / ".index" / digest
        with file_lock(self.root / LOCK_FILE):
            if not force:
                existing = self._indexed(pointer)
                if existing is not None and existing["status"] not in RELAUNCHABLE:
                    return existing["id"], False
            job_id = uuid.uuid4().hex
            folder = self.job_dir(job_id)
            folder.mkdir()
            (folder / RESULTS_DIR).mkdir()
            (folder / LOCK_FILE).touch()
            spec = dict(spec_for_disk)
            if not spec.get("results_dir"):
                spec["results_dir"] = str(folder / RESULTS_DIR)
            atomic_write_text(folder / SPEC_FILE, yaml.safe_dump(spec, sort_keys=False))
            record = make_record(job_id, folder)
            record.update({
                "id": job_id,
                "action": action,
                "name": name,
                "parent_job_id": parent_job_id,
                "status": PENDING,
                "spec_digest": digest,
                "results_dir": str(spec["results_dir"]),
                "created_at": now_iso(),
                "updated_at": now_iso(),
                "history": [{"status": PENDING, "at": now_iso(), "reason": None}],
            })
            self._write(job_id, record)
            atomic_write_text(pointer, job_id + "\n")
            return job_id, True

    def _indexed(self, pointer: Path) -> dict[str, Any] | None:
        try:
            job_id = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        try:
            return self.read(job_id)
        except (UnknownJobError, DataError):
            return None  # dangling or damaged: a new job replaces it


def check_transition(old: str, new: Any) -> None:
    if new not in STATES:
        raise StateError(f"unknown job state {new!r}", key="status", hint=f"one of {', '.join(STATES)}")
    if old in FINISHED:
        raise StateError(f"job is {old}, a final state; it cannot become {new}", key="status",
                         hint="launch a new job instead (create_job with force=True)")
    if new not in _ALLOWED.get(old, set()):
        raise StateError(f"a {old} job cannot become {new}", key="status")
