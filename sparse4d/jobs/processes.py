"""Is the process we launched still the one running under that pid?

Pids are reused. A job record keeps each pid together with its start time (clock ticks since boot,
from ``/proc/<pid>/stat``), so a status check days later never mistakes, or signals, an unrelated
process that happens to hold the same pid. Zombies count as dead.
"""
from __future__ import annotations

import os
from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces; split after it.
    tail = raw[raw.rfind(")") + 2:].split()
    return tail  # tail[0] is field 3 (state), tail[19] is field 22 (starttime)


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None where /proc is unavailable or pid gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def identity(pid: int) -> dict[str, Any]:
    """What a record stores to recognise this process later."""
    return {"pid": pid, "start_ticks": start_ticks(pid)}


def is_alive(ident: dict[str, Any] | None) -> bool:
    """True when the process described by `ident` (from :func:`identity`) still runs."""
    if not ident or not isinstance(ident.get("pid"), int) or ident["pid"] <= 0:
        return False
    pid = ident["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to someone else: fall through to the identity check
    fields = _stat_fields(pid)
    if fields is None:
        return not os.path.isdir("/proc")  # no /proc (not Linux): trust os.kill
    if fields[0] in ("Z", "X"):
        return False
    expected = ident.get("start_ticks")
    return expected is None or start_ticks(pid) == expected


def signal_group(ident: dict[str, Any] | None, sig: int) -> bool:
    """Send `sig` to the process group led by `ident` if that process is still ours; True if sent."""
    if not is_alive(ident):
        return False
    try:
        os.killpg(ident["pid"], sig)  # the trainer is a session leader: its pgid is its pid
    except (ProcessLookupError, PermissionError):
        return False
    return True

