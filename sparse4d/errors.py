"""Errors a user can act on.

Every failure caused by input (a spec key, a file, a dataset, a job id) is raised as one of these so the
CLIs can print one clear message and exit with the documented code instead of a traceback.
"""
from __future__ import annotations

# Documented exit codes shared by `runner` and `sparse4d`.
EXIT_OK = 0
EXIT_FAILURE = 1  # a run started and failed (training diverged, a job errored, ...)
EXIT_USAGE = 2  # bad command line (click's own convention)
EXIT_INVALID_SPEC = 3  # the spec (or an override) is invalid
EXIT_FILE_NOT_FOUND = 4  # a file or object the spec names does not exist
EXIT_DATA = 5  # input data exists but is unusable (corrupt, hostile, inconsistent)
EXIT_STORAGE = 6  # remote storage (S3) unreachable, refused or misconfigured


class Sparse4DError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code to use."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, str | None]:
        return {"key": self.key, "message": self.message, "hint": self.hint}


class SpecError(Sparse4DError):
    """The spec or an override is invalid (names the dotted key)."""

    exit_code = EXIT_INVALID_SPEC


class InputFileError(Sparse4DError):
    """A file, folder or object that the spec or command names does not exist."""

    exit_code = EXIT_FILE_NOT_FOUND


class DataError(Sparse4DError):
    """Input data exists but cannot be used safely (corrupt, hostile or inconsistent)."""

    exit_code = EXIT_DATA


class StorageError(Sparse4DError):
    """Remote storage failed: endpoint down, credentials refused, bucket or key missing."""

    exit_code = EXIT_STORAGE
