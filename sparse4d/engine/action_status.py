"""The status.json lifecycle shared by the one-shot actions (evaluate, inference, export, quantize).

Each action writes STARTED when it begins and, if it fails, one FAILURE event naming the error before
the error propagates; the action itself writes SUCCESS with its own message and KPIs.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparse4d.errors import Sparse4DError
from sparse4d.jobs.status_file import FAILURE, STARTED, StatusWriter, status_file_for


@contextmanager
def action_status(results_dir: Path, started: str, *, oom_action: str | None = None) -> Iterator[StatusWriter]:
    """Create results_dir, write STARTED (`started` as its message), yield the writer.

    On any exception a FAILURE event is written and the exception re-raised; with `oom_action`, a CUDA
    out-of-memory error is first turned into the Sparse4DError that names the knobs to lower.
    """
    from sparse4d.engine.devices import is_oom, oom_error

    results_dir.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(status_file_for(results_dir))
    status.write(STARTED, started)
    try:
        yield status
    except BaseException as exc:
        error = oom_error(exc, oom_action) if oom_action is not None and is_oom(exc) else exc
        message = str(error) if isinstance(error, Sparse4DError) else f"{type(exc).__name__}: {exc}"
        status.write(FAILURE, message[:2000], verbosity="ERROR")
        if error is not exc:
            raise error from exc
        raise
