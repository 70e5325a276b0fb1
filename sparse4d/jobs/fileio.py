"""Atomic writes and advisory locks: the two tools that keep the job store consistent.

A reader never sees a half-written record (tmp file in the same folder, fsync, ``os.replace``), and
two processes never interleave read-modify-write cycles on one record (``fcntl.flock`` on a lock file
beside it). Standard library only: the trainer uses these too.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after os.replace keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike[str], *, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) ``flock`` on `lock_path` for the duration of the block.

    The lock file itself is never removed: removing it would let two processes lock two different
    inodes under the same name.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# ``.<name>.<pid>[.<random>].tmp[.<ext>]``: the temporaries of writers that put their pid in the name.
_PID_TEMPORARY = re.compile(r"^\..+?\.(?P<pid>\d+)(?:\.[A-Za-z0-9_]+)?\.tmp(?:\.[A-Za-z0-9]+)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Delete temporaries whose writer (the pid in the name) is gone: a kill -9 skips every cleanup.

    Only files named ``.<name>.<pid>[.<random>].tmp[.<ext>]`` are touched, and never while that pid
    lives, so a writer running beside us keeps its file. Returns the paths removed.
    """
    base = Path(folder)
    if not base.is_dir():
        return []
    removed = []
    for path in (base.rglob(".*tmp*") if recursive else base.glob(".*tmp*")):
        match = _PID_TEMPORARY.match(path.name)
        if match and path.is_file() and not path.is_symlink() and not _pid_alive(int(match.group("pid"))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
