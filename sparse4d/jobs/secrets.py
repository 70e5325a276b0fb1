"""Mask secrets before anything is written or printed.

Two kinds of secret are masked: values stored under a secret-looking key (``encryption_key``,
``aws_secret_access_key``, ``WANDB_API_KEY``, ``*token*``, ``*password*`` ...), and the *values* of
secret-looking environment variables wherever they appear in free text (a trainer that prints its key
must not leak it into ``log``). The job backend passes the real ``encryption_key`` to the trainer
through ``SPARSE4D_ENCRYPTION_KEY`` in the child environment, so it never reaches ``spec.yaml`` on disk.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Environment variable through which the trainer receives `encryption_key`.
ENCRYPTION_KEY_ENV = "SPARSE4D_ENCRYPTION_KEY"

# A key is secret when its name (case-insensitive) contains one of these words.
_SECRET_KEY_WORDS = (
    "encryption_key",
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
)
_SECRET_KEY_RE = re.compile("|".join(re.escape(w) for w in _SECRET_KEY_WORDS), re.IGNORECASE)

# `name: value`, `name=value`, `"name": "value"` in free text, for any secret-looking name.
_ASSIGNMENT_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_\-\.]*(?:" + "|".join(re.escape(w) for w in _SECRET_KEY_WORDS) + r")[A-Za-z0-9_\-]*)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s\"',}\]]+)",
    re.IGNORECASE,
)

# Secret values shorter than this are not masked in free text (they would mask ordinary words).
MIN_SECRET_LEN = 4


def is_secret_key(name: str) -> bool:
    """True for keys whose values must never be written (`encryption_key`, `AWS_SECRET_ACCESS_KEY` ...)."""
    return bool(_SECRET_KEY_RE.search(name))


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlaps mask fully)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_key(k) and v and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, extra_secrets: Iterable[str] = (), *, use_environment: bool = True) -> str:
    """Mask `key: value` assignments of secret keys and every known secret value in `text`.

    `use_environment=False` masks only `extra_secrets`: for records holding paths, where a short
    environment secret (``AWS_ACCESS_KEY_ID=testing``) must not rewrite a folder name.
    """
    known = (*environment_secrets(), *extra_secrets) if use_environment else tuple(extra_secrets)
    values = sorted({s for s in known if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    return _ASSIGNMENT_RE.sub(lambda m: m.group("name") + m.group("sep") + MASK if m.group("value") != MASK
                              else m.group(0), text)


def redact(obj: Any, extra_secrets: Iterable[str] = (), *, use_environment: bool = True) -> Any:
    """Return a copy of `obj` (text, mapping, list, scalar) with every secret masked.

    Mappings: values under secret keys become ``"***"`` (empty values stay empty so "not set" is still
    visible); strings anywhere are passed through :func:`redact_text`.
    """
    extra = tuple(extra_secrets)
    if isinstance(obj, str):
        return redact_text(obj, extra, use_environment=use_environment)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, str) and is_secret_key(key) and value not in (None, ""):
                out[key] = _mask_all(value)
            else:
                out[key] = redact(value, extra, use_environment=use_environment)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, extra, use_environment=use_environment) for v in obj)
    return obj


def _mask_all(obj: Any) -> Any:
    """Everything under a secret key is secret, however it is nested."""
    if isinstance(obj, Mapping):
        return {k: _mask_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_mask_all(v) for v in obj)
    return MASK if obj not in (None, "") else obj


def split_secrets(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split a spec into what may be written to disk and the secrets the child gets through its env.

    Returns ``(spec_without_secrets, child_env)``: the top-level ``encryption_key`` moves to
    ``SPARSE4D_ENCRYPTION_KEY``; every other secret-looking key is blanked on disk (the trainer has no
    use for it in the spec; credentials reach it through the usual AWS/W&B variables).
    """
    child_env: dict[str, str] = {}
    key = spec.get("encryption_key")
    if isinstance(key, str) and key:
        child_env[ENCRYPTION_KEY_ENV] = key

    def blank(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: ("" if isinstance(k, str) and is_secret_key(k) and not isinstance(v, Mapping) else blank(v))
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [blank(v) for v in obj]
        return obj

    return blank(spec), child_env


def secret_values_in(spec: Mapping[str, Any]) -> list[str]:
    """Every non-empty string stored under a secret key in `spec` (to mask them in free text too)."""
    found: list[str] = []

    def walk(obj: Any, secret: bool) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, secret or (isinstance(k, str) and is_secret_key(k)))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, secret)
        elif secret and isinstance(obj, str) and obj:
            found.append(obj)

    walk(spec, False)
    return found
