"""Local job backend with the TAO SDK job surface, status events, storage (local, S3) and secrets.

Nothing here imports torch. Entry points::

    from sparse4d.jobs import create_job, get_job_status, wait
    job_id = create_job("train", spec, parent_job_id=None)   # jobs root: $SPARSE4D_JOBS_ROOT

Modules: ``backend`` (create/status/logs/results/checkpoints/cancel/wait), ``store`` (records, states,
locks), ``supervise`` (the process that runs one job), ``status_file`` (TAO status.json),
``storage`` (s3:// sync and upload), ``secrets`` (redaction), ``cli`` (``runner job ...``).
"""
from __future__ import annotations

from .backend import (
    JobBackend,
    WaitTimeout,
    cancel_job,
    create_job,
    get_job_logs,
    get_job_results_dir,
    get_job_status,
    list_checkpoints,
    wait,
)
from .store import CANCELED, CANCELING, DONE, ERROR, FINISHED, PENDING, RUNNING, UnknownJobError, default_jobs_root

__all__ = [
    "CANCELED", "CANCELING", "DONE", "ERROR", "FINISHED", "PENDING", "RUNNING",
    "JobBackend", "UnknownJobError", "WaitTimeout", "cancel_job", "create_job", "default_jobs_root",
    "get_job_logs", "get_job_results_dir", "get_job_status", "list_checkpoints", "wait",
]
