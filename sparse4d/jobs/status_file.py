"""TAO-format ``status.json``: one JSON event per line, appended by the trainer, read by the planner.

Each line is ``{"date", "time", "status", "verbosity", "message", "categorical", "graphical", "kpi"}``.
``status`` is one of STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED; ``kpi`` holds scalar metrics
(``val_mAP``, ``mAP``, ...). Appends are whole lines written under an ``flock`` and fsynced, and a
line torn by a kill is skipped by readers (and closed off by the next writer), so a killed run never
makes the file unreadable. Standard library only: the trainer imports this module.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED = "STARTED", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED"
STATUSES = (STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED)
VERBOSITIES = ("DEBUG", "INFO", "WARNING", "ERROR")

METRIC_ALIASES = ("val_mAP", "mAP", "img_bbox_NuScenes/mAP")

# Set by the job supervisor: where the trainer appends its events (``<jobdir>/status.json``). A trainer
# run by hand, without it, writes ``<results_dir>/status.json``.
STATUS_FILE_ENV = "SPARSE4D_STATUS_FILE"


def status_file_for(results_dir: str | os.PathLike[str]) -> Path:
    """Where a trainer writes its events: ``$SPARSE4D_STATUS_FILE`` or ``<results_dir>/status.json``."""
    override = os.environ.get(STATUS_FILE_ENV, "").strip()
    return Path(override) if override else Path(results_dir) / "status.json"


def _json_safe(obj: Any) -> Any:
    """NaN and infinity are not JSON: write them as null so every reader can parse the line."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars, without importing either
        return _json_safe(obj.item())
    return str(obj)


def make_event(
    status: str,
    message: str = "",
    *,
    verbosity: str = "INFO",
    kpi: Mapping[str, Any] | None = None,
    categorical: Mapping[str, Any] | None = None,
    graphical: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One status event as a dict in the TAO layout."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if verbosity not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
    stamp = time.localtime(time.time() if now is None else now)
    return {
        "date": f"{stamp.tm_mon}/{stamp.tm_mday}/{stamp.tm_year}",
        "time": f"{stamp.tm_hour}:{stamp.tm_min:02d}:{stamp.tm_sec:02d}",
        "status": status,
        "verbosity": verbosity,
        "message": str(message),
        "categorical": _json_safe(dict(categorical or {})),
        "graphical": _json_safe(dict(graphical or {})),
        "kpi": _json_safe(dict(kpi or {})),
    }


class StatusWriter:
    """Appends events to one status.json; safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(
        self,
        status: str = RUNNING,
        message: str = "",
        *,
        verbosity: str = "INFO",
        kpi: Mapping[str, Any] | None = None,
        categorical: Mapping[str, Any] | None = None,
        graphical: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one complete event line (flushed and fsynced) and return the event."""
        event = make_event(status, message, verbosity=verbosity, kpi=kpi, categorical=categorical,
                           graphical=graphical)
        append_event(self.path, event)
        return event


def append_event(path: str | os.PathLike[str], event: Mapping[str, Any]) -> None:
    """Append `event` as one line; a torn last line left by a killed writer is closed off first."""
    line = json.dumps(_json_safe(event), allow_nan=False, sort_keys=False).encode("utf-8") + b"\n"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All parseable events in order; torn or garbled lines are skipped, a missing file gives []."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events: list[dict[str, Any]] = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line.decode("utf-8", errors="replace"))
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _events(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        return read_events(source)
    return list(source)


def latest_metric(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    aliases: Sequence[str] = METRIC_ALIASES,
) -> float | None:
    """The newest finite value of the first alias found in an event's ``kpi``, or None.

    Events are searched newest first; within one event the aliases are tried in order.
    """
    for event in reversed(_events(source)):
        kpi = event.get("kpi")
        if not isinstance(kpi, Mapping):
            continue
        for name in aliases:
            value = kpi.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                return float(value)
    return None


def last_status(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]]) -> str | None:
    """The ``status`` of the newest event (e.g. FAILURE), or None when there is none."""
    events = _events(source)
    return str(events[-1].get("status")) if events else None
