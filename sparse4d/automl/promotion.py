"""Rung jobs and promotions: every rung of a trial is one train job on the job backend.

A promotion is a new train job that resumes from the *explicit* epoch/step checkpoint of the source
rung job (``train.resume_training_checkpoint_path``, chosen by :mod:`sparse4d.skill.checkpoints`,
never a ``*latest*`` file), with ``train.num_epochs`` raised to the next rung's budget.

When a finished rung job has no fresh ``val_mAP`` (or its aliases ``mAP`` and
``img_bbox_NuScenes/mAP``), the trial carries the source rung's metric, but only after checking that
the job really resumed from that checkpoint (its spec, and its log where it names one) and produced
its own checkpoint for the new budget that is a real file (non-empty zip archive, as ``torch.save``
writes) and, when a loader is given, loads. Otherwise the rung fails with the reason.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import Sparse4DError
from ..jobs.backend import JobBackend
from ..jobs.secrets import split_secrets
from ..jobs.status_file import METRIC_ALIASES, latest_metric, read_events
from ..jobs.store import DONE, FINISHED, SPEC_FILE, status_path
from ..skill.checkpoints import parse_checkpoint, select_checkpoint

RESUME_KEY = "train.resume_training_checkpoint_path"
EPOCHS_KEY = "train.num_epochs"
ZIP_MAGIC = b"PK\x03\x04"
_LOG_CHECKPOINT_RE = re.compile(r"resum\w*[^\n]*?(\S+\.pth)", re.IGNORECASE)

CheckpointLoader = Callable[[Path], None]  # raises when the file does not load


@dataclass
class RungOutcome:
    """What one finished rung job gave the trial."""

    ok: bool
    job_id: str
    epochs: int
    metric: float | None = None
    metric_source: str = ""  # "fresh" or "carried from <job id>"
    checkpoint: str | None = None  # absolute path of the rung's checkpoint
    epoch: int | None = None
    step: int | None = None
    reason: str | None = None
    resume_evidence: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_name(study: str, trial_number: int, rung: int) -> str:
    """The job name that identifies one rung of one trial (found again after a controller restart)."""
    return f"automl:{study}:trial{trial_number}:rung{rung}"


def find_job_by_name(backend: JobBackend, name: str) -> str | None:
    """The newest train job with this name, or None."""
    found = [r for r in backend.store.list() if r.get("name") == name and r.get("action") == "train"]
    return found[-1]["id"] if found else None


def launch_rung_job(backend: JobBackend, spec: Mapping[str, Any], *, name: str,
                    parent_job_id: str | None) -> tuple[str, bool]:
    """Create (or find again, by name) the rung's train job; returns (job_id, newly_created)."""
    existing = find_job_by_name(backend, name)
    if existing is not None:  # a previous controller recorded it; it may have died before starting it
        backend.launch(existing, split_secrets(spec)[1])
        return existing, False
    job_id, _ = backend.submit("train", spec, parent_job_id, name=name, force=True)
    return job_id, True


def rung_checkpoint(backend: JobBackend, job_id: str, epochs: int) -> tuple[Path, int, int]:
    """The explicit checkpoint a job trained to `epochs` wrote (zero-indexed names accepted)."""
    choice = select_checkpoint(backend.list_checkpoints(job_id), epoch=epochs, where=f"train job {job_id}")
    return backend.get_job_results_dir(job_id) / choice.name, int(choice.epoch), int(choice.step)  # type: ignore[arg-type]


def check_checkpoint_file(path: Path, loader: CheckpointLoader | None = None) -> str | None:
    """None when `path` is a real checkpoint (exists, non-empty zip archive, loads); else the reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"checkpoint {path} cannot be read ({exc.strerror or exc})"
    if size == 0:
        return f"checkpoint {path} is empty"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != ZIP_MAGIC:
        return f"checkpoint {path} is not a torch zip archive (starts with {head!r})"
    if loader is not None:
        try:
            loader(path)
        except Exception as exc:  # noqa: BLE001 - any load failure is the reason we report
            return f"checkpoint {path} does not load: {exc}"
    return None


def torch_load_in_subprocess(path: Path, timeout: float = 600.0) -> None:
    """A loader that checks ``torch.load(weights_only=True)`` in a child process (keeps AutoML torch-free)."""
    code = ("import sys, torch; torch.load(sys.argv[1], map_location='cpu', weights_only=True)")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"loading took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {done.returncode}")


def _spec_value(spec: Mapping[str, Any], key: str) -> Any:
    node: Any = spec
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def verify_resume(backend: JobBackend, job_id: str, expected: Path) -> tuple[str | None, str]:
    """(reason or None, evidence): did the job resume from `expected`? Reads its spec and its log."""
    try:
        spec = yaml.safe_load(backend.store.path(job_id, SPEC_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return f"cannot read the spec of job {job_id} ({exc})", ""
    named = _spec_value(spec, RESUME_KEY)
    if not named or os.path.abspath(str(named)) != os.path.abspath(str(expected)):
        return f"job {job_id} resumed from {named!r}, not the source checkpoint {expected}", ""
    mentioned = {os.path.abspath(m) for m in _LOG_CHECKPOINT_RE.findall(backend.get_job_logs(job_id))}
    if mentioned and os.path.abspath(str(expected)) not in mentioned:
        return f"job {job_id} log says it resumed from {sorted(mentioned)}, not {expected}", ""
    return None, "spec and log" if mentioned else "spec (the log names no checkpoint)"


def settle_rung_job(backend: JobBackend, job_id: str, *, epochs: int, resume_from: Path | None = None,
                    source_metric: float | None = None, source_job_id: str | None = None,
                    loader: CheckpointLoader | None = None) -> RungOutcome:
    """Judge a finished rung job: its metric (fresh or carried) and its checkpoint for `epochs`."""
    status = backend.get_job_status(job_id)
    if status["status"] not in FINISHED:
        raise Sparse4DError(f"job {job_id} is still {status['status']}", key="job_id")
    outcome = RungOutcome(ok=False, job_id=job_id, epochs=epochs)
    if status["status"] != DONE:
        outcome.reason = f"train job {job_id} ended {status['status']}: {status.get('reason') or 'see its log'}"
        return outcome
    if resume_from is not None:
        reason, evidence = verify_resume(backend, job_id, resume_from)
        if reason:
            outcome.reason = reason
            return outcome
        outcome.resume_evidence = evidence
    try:
        path, epoch, step = rung_checkpoint(backend, job_id, epochs)
    except Sparse4DError as exc:
        outcome.reason = f"no checkpoint for {epochs} epochs: {exc}"
        return outcome
    if resume_from is not None:
        source = parse_checkpoint(str(resume_from))
        if source is not None and (epoch, step) <= source:
            outcome.reason = f"job {job_id} wrote no checkpoint past the source (epoch {source[0]} step {source[1]})"
            return outcome
    bad = check_checkpoint_file(path, loader)
    if bad:
        outcome.reason = bad
        return outcome
    outcome.checkpoint, outcome.epoch, outcome.step = str(path), epoch, step
    metric = latest_metric(read_events(status_path(backend.store.job_dir(job_id), status.get("results_dir"))),
                           METRIC_ALIASES)
    if metric is not None:
        outcome.ok, outcome.metric, outcome.metric_source = True, metric, "fresh"
    elif resume_from is not None and source_metric is not None:
        outcome.ok, outcome.metric = True, source_metric
        outcome.metric_source = f"carried from {source_job_id}"
    else:
        outcome.reason = f"train job {job_id} reported no val_mAP (or {', '.join(METRIC_ALIASES[1:])})"
    return outcome
