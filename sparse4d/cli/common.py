"""What every CLI command shares: one JSON document on stdout with --json, logs on stderr, exit codes."""
from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable

import click

from ..errors import EXIT_FAILURE, Sparse4DError

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 failed, 2 usage, 3 invalid spec, 4 file not found, 5 bad data, 6 storage."


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, allow_nan=False, default=str))


def log(message: str) -> None:
    click.echo(message, err=True)


def run_guarded(fn: Callable[[], int | None], *, as_json: bool = False) -> None:
    """Run a command body; turn user errors into one message (or JSON) and the documented exit code."""
    try:
        code = fn() or 0
    except Sparse4DError as exc:
        if as_json:
            emit_json({"ok": False, "error": exc.to_dict(), "exit_code": exc.exit_code})
        else:
            log(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless debugging
        if os.environ.get("SPARSE4D_DEBUG"):
            traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc} (set SPARSE4D_DEBUG=1 for the traceback)"
        if as_json:
            emit_json({"ok": False, "error": {"key": None, "message": message, "hint": None}, "exit_code": EXIT_FAILURE})
        else:
            log(message)
        sys.exit(EXIT_FAILURE)
    sys.exit(code)
