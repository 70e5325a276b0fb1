"""Local paths and ``s3://bucket/key`` URIs: sync inputs into a local cache, upload results back.

The S3 endpoint is ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL`` (AWS itself when neither is set);
credentials come from the usual boto3 chain. Every failure is a :class:`StorageError` that says what to
fix (credentials, bucket, key, endpoint), raised before a job is launched. Calls retry with backoff
(botocore "standard" mode) at most ``$SPARSE4D_S3_MAX_ATTEMPTS`` times in all, the first included
(default 4), under short timeouts (``$SPARSE4D_S3_CONNECT_TIMEOUT`` 5 s, ``$SPARSE4D_S3_READ_TIMEOUT`` 30 s).

Cache layout under ``cache_root`` (``$SPARSE4D_CACHE_DIR``, default ``~/.sparse4d/cache``)::

    s3/<bucket>/<key>              the object, as the trainer reads it
    .meta/<bucket>/<key>.json      {"etag", "size"} of the cached copy

An object is downloaded only when its ETag differs from the cached one; downloads go to a temporary
file that replaces the cache entry only once complete, so a failure never leaves a partial entry.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, InputFileError, StorageError
from .fileio import atomic_write_json, file_lock

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CACHE_ENV = "SPARSE4D_CACHE_DIR"
MAX_ATTEMPTS_ENV, CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV = (
    "SPARSE4D_S3_MAX_ATTEMPTS", "SPARSE4D_S3_CONNECT_TIMEOUT", "SPARSE4D_S3_READ_TIMEOUT")
DEFAULT_MAX_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT = 4, 5.0, 30.0
_CHUNK = 1 << 20

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Uri:
    """Split ``s3://bucket/key``; a malformed URI is a StorageError naming it."""
    if not is_s3_uri(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI", hint="write s3://bucket/key")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise StorageError(f"invalid bucket name {bucket!r} in {uri!r}",
                           hint="bucket names are 3-63 lowercase letters, digits, '.' and '-'")
    return S3Uri(bucket, key)


def default_cache_root() -> Path:
    raw = os.environ.get(CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path("~/.sparse4d/cache").expanduser()


def endpoint_url() -> str | None:
    for name in ENDPOINT_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _env_number(name: str, default: float, cast: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number", key=name) from None
    if value <= 0:
        raise StorageError(f"{name} must be positive, got {raw}", key=name)
    return value


def s3_client() -> Any:
    """A boto3 S3 client with bounded retries and timeouts; StorageError when there are no credentials."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise StorageError(
            "no AWS credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) before launching",
        )
    endpoint = endpoint_url()
    config = Config(
        retries={"total_max_attempts": _env_number(MAX_ATTEMPTS_ENV, DEFAULT_MAX_ATTEMPTS, int), "mode": "standard"},
        connect_timeout=_env_number(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT, float),
        read_timeout=_env_number(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT, float),
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


@contextlib.contextmanager
def _s3_errors(what: str, bucket: str) -> Iterator[None]:
    """Turn botocore failures into StorageError messages that name the thing to fix."""
    from botocore import exceptions as bce

    where = endpoint_url() or "the AWS S3 endpoint"
    try:
        yield
    except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
        raise StorageError(f"{what}: AWS credentials are missing or incomplete ({exc})",
                           hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
            bce.ConnectionClosedError) as exc:
        raise StorageError(f"{what}: S3 endpoint {where} unreachable after retries ({type(exc).__name__})",
                           hint=f"check {' / '.join(ENDPOINT_ENVS)} and that the endpoint is up") from None
    except bce.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise StorageError(f"{what}: bucket {bucket!r} does not exist at {where}",
                               hint="create it or fix the bucket name") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise StorageError(f"{what}: not found", hint="check the key; list it with `aws s3 ls`") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
            raise StorageError(f"{what}: access denied ({code})",
                               hint="check the AWS credentials and the bucket policy") from None
        raise StorageError(f"{what}: S3 error {code or status}: {error.get('Message', '')}".rstrip(": ")) from None
    except bce.BotoCoreError as exc:
        raise StorageError(f"{what}: {exc}") from None


def _require_bucket(client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    with _s3_errors(f"bucket s3://{bucket}", bucket):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"bucket {bucket!r} does not exist at {endpoint_url() or 'AWS S3'}",
                                   hint="create it or fix the bucket name") from None
            raise


def _safe_join(base: Path, key: str) -> Path:
    """`base/key`, refusing keys that would escape `base` (``..``, absolute parts)."""
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts) or not parts:
        raise DataError(f"S3 key {key!r} cannot be stored safely (empty, '.' or '..' parts)", key="s3_key")
    target = base.joinpath(*parts)
    if not target.resolve().is_relative_to(base.resolve()):
        raise DataError(f"S3 key {key!r} points outside the cache", key="s3_key")
    return target


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _fetch(client: Any, bucket: str, key: str, etag: str, size: int, dest: Path, meta_path: Path) -> bool:
    """Download one object unless the cached copy has the same ETag; True when it downloaded."""
    meta = _read_meta(meta_path)
    if meta.get("etag") == etag and dest.is_file() and dest.stat().st_size == size:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
    try:
        with _s3_errors(f"download s3://{bucket}/{key}", bucket):
            response = client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            with open(tmp, "wb") as handle:
                for chunk in iter(lambda: body.read(_CHUNK), b""):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        got_size = tmp.stat().st_size
        expected = int(response.get("ContentLength", got_size))
        if got_size != expected:
            raise StorageError(f"download s3://{bucket}/{key}: got {got_size} of {expected} bytes",
                               hint="the connection dropped; run again")
        os.replace(tmp, dest)
        atomic_write_json(meta_path, {"etag": response.get("ETag", etag), "size": got_size})
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def sync_to_cache(uri: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None) -> Path:
    """The local path of `uri`: local paths as they are, S3 objects and prefixes via the cache.

    A key naming an object gives a file; a key naming a prefix (``s3://b/data`` or ``s3://b/data/``)
    gives a folder mirroring every object under it (files deleted remotely are removed locally).
    """
    text = os.fspath(uri)
    if not is_s3_uri(text):
        path = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
        if not path.exists():
            raise InputFileError(f"{path} does not exist", hint="check the path (or use an s3:// URI)")
        return path
    target = parse_s3_uri(text)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    data_base, meta_base = root / "s3" / target.bucket, root / ".meta" / target.bucket
    data_base.mkdir(parents=True, exist_ok=True)
    meta_base.mkdir(parents=True, exist_ok=True)
    client = s3_client()
    with file_lock(root / ".meta" / f"{target.bucket}.lock"):
        if target.key and not target.key.endswith("/"):
            head = _head(client, target.bucket, target.key)
            if head is not None:
                dest = _safe_join(data_base, target.key)
                _fetch(client, target.bucket, target.key, head["ETag"], int(head["ContentLength"]), dest,
                       _safe_join(meta_base, target.key + ".json"))
                return dest
        return _sync_prefix(client, target, data_base, meta_base)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """head_object, or None when the key is absent (it may still be a prefix)."""
    from botocore.exceptions import ClientError

    with _s3_errors(f"s3://{bucket}/{key}", bucket):
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise


def _list(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    with _s3_errors(f"list s3://{bucket}/{prefix}", bucket):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return objects


def _sync_prefix(client: Any, target: S3Uri, data_base: Path, meta_base: Path) -> Path:
    prefix = target.key.rstrip("/") + "/" if target.key.strip("/") else ""
    objects = _list(client, target.bucket, prefix)
    if not objects:
        _require_bucket(client, target.bucket)
        raise StorageError(f"no object or prefix {target} exists", key=str(target),
                           hint="check the key; prefixes must contain at least one object")
    folder = _safe_join(data_base, prefix) if prefix else data_base
    wanted = set()
    for obj in objects:
        dest = _safe_join(data_base, obj["Key"])
        wanted.add(dest)
        _fetch(client, target.bucket, obj["Key"], obj["ETag"], int(obj["Size"]), dest,
               _safe_join(meta_base, obj["Key"] + ".json"))
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.name.startswith(".") and path not in wanted:
            path.unlink()
            rel = path.relative_to(data_base).as_posix()
            with contextlib.suppress(FileNotFoundError, DataError):
                _safe_join(meta_base, rel + ".json").unlink()
    return folder


def upload_dir(local_dir: str | os.PathLike[str], s3_uri: str) -> list[str]:
    """Upload every file under `local_dir` to the prefix `s3_uri`; returns the keys written.

    Symlinks leading outside `local_dir` are refused (DataError): results never carry foreign files.
    """
    base = Path(local_dir).expanduser()
    if not base.is_dir():
        raise InputFileError(f"{base} is not a folder", hint="upload_dir needs the results folder")
    target = parse_s3_uri(s3_uri)
    prefix = target.key.rstrip("/") + "/" if target.key.strip("/") else ""
    files: list[Path] = []
    real_base = base.resolve()
    for path in sorted(base.rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(real_base):
            raise DataError(f"{path} is a symlink to {path.resolve()}, outside {base}",
                            hint="results may only contain their own files; remove the link")
        if path.is_file():
            files.append(path)
    client = s3_client()
    _require_bucket(client, target.bucket)
    keys = []
    for path in files:
        key = prefix + path.relative_to(base).as_posix()
        with _s3_errors(f"upload {path} to s3://{target.bucket}/{key}", target.bucket):
            client.upload_file(str(path), target.bucket, key)
        keys.append(key)
    return keys


def check_exists(uri: str) -> None:
    """Raise StorageError/InputFileError unless `uri` (file, object or prefix) exists; downloads nothing."""
    if not is_s3_uri(uri):
        sync_to_cache(uri)
        return
    target = parse_s3_uri(uri)
    client = s3_client()
    if target.key and not target.key.endswith("/") and _head(client, target.bucket, target.key) is not None:
        return
    prefix = target.key.rstrip("/") + "/" if target.key.strip("/") else ""
    with _s3_errors(f"list {target}", target.bucket):
        page = client.list_objects_v2(Bucket=target.bucket, Prefix=prefix, MaxKeys=1)
    if not page.get("KeyCount"):
        _require_bucket(client, target.bucket)
        raise StorageError(f"no object or prefix {target} exists", key=str(target),
                           hint="check the key; prefixes must contain at least one object")
