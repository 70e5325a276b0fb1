"""S3 storage against moto's server on 127.0.0.1: cache by ETag, uploads, and clear failures."""
from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest

from sparse4d.errors import DataError, InputFileError, StorageError
from sparse4d.jobs.backend import JobBackend
from sparse4d.jobs.storage import check_exists, parse_s3_uri, sync_to_cache, upload_dir



@pytest.fixture
def s3(s3_env: str):
    return boto3.client("s3", endpoint_url=s3_env)


def _no_partial_entries(cache: Path) -> None:
    assert not [p for p in cache.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_file_sync_reuses_unchanged_and_refetches_changed(s3, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="data/anchors.npy", Body=b"v1" * 1000)
    cache = tmp_path / "cache"
    local = sync_to_cache(f"s3://{bucket}/data/anchors.npy", cache)
    assert local.read_bytes() == b"v1" * 1000
    inode = local.stat().st_ino
    again = sync_to_cache(f"s3://{bucket}/data/anchors.npy", cache)
    assert again == local and again.stat().st_ino == inode  # same ETag: not downloaded again
    s3.put_object(Bucket=bucket, Key="data/anchors.npy", Body=b"v2-changed")
    changed = sync_to_cache(f"s3://{bucket}/data/anchors.npy", cache)
    assert changed.read_bytes() == b"v2-changed" and changed.stat().st_ino != inode
    _no_partial_entries(cache)


def test_prefix_sync_mirrors_folder(s3, bucket: str, tmp_path: Path) -> None:
    for key in ("ds/train/a.pkl", "ds/train/sub/b.h5", "ds/val/c.pkl", "other/x.bin"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    cache = tmp_path / "cache"
    folder = sync_to_cache(f"s3://{bucket}/ds", cache)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["train/a.pkl", "train/sub/b.h5", "val/c.pkl"]
    assert (folder / "train/sub/b.h5").read_bytes() == b"ds/train/sub/b.h5"
    inode = (folder / "train/a.pkl").stat().st_ino
    s3.delete_object(Bucket=bucket, Key="ds/val/c.pkl")
    s3.put_object(Bucket=bucket, Key="ds/train/sub/b.h5", Body=b"new")
    assert sync_to_cache(f"s3://{bucket}/ds/", cache) == folder
    assert not (folder / "val/c.pkl").exists()
    assert (folder / "train/sub/b.h5").read_bytes() == b"new"
    assert (folder / "train/a.pkl").stat().st_ino == inode
    _no_partial_entries(cache)


def test_upload_dir_and_check_exists(s3, bucket: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "sub").mkdir(parents=True)
    (results / "model_epoch_000_step_00010.pth").write_bytes(b"ckpt")
    (results / "sub" / "metrics.json").write_text("{}")
    keys = upload_dir(results, f"s3://{bucket}/runs/1")
    assert sorted(keys) == ["runs/1/model_epoch_000_step_00010.pth", "runs/1/sub/metrics.json"]
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"])
    assert listed == sorted(keys)
    check_exists(f"s3://{bucket}/runs/1")
    check_exists(f"s3://{bucket}/runs/1/sub/metrics.json")
    with pytest.raises(StorageError, match="no object or prefix"):
        check_exists(f"s3://{bucket}/runs/2")


def test_upload_refuses_symlink_leaving_results(bucket: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "private.txt").write_text("not yours")
    (results / "link.pth").symlink_to(tmp_path / "private.txt")
    with pytest.raises(DataError, match="outside"):
        upload_dir(results, f"s3://{bucket}/r")


def test_missing_bucket_and_key_are_clear_errors(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        sync_to_cache("s3://no-such-bucket-xyz/data/file.bin", tmp_path / "cache")
    with pytest.raises(StorageError, match="no object or prefix"):
        sync_to_cache(f"s3://{bucket}/missing/key.bin", tmp_path / "cache")
    with pytest.raises(StorageError, match="does not exist"):
        upload_dir(tmp_path, "s3://no-such-bucket-xyz/out")
    with pytest.raises(StorageError, match="invalid bucket name"):
        parse_s3_uri("s3://Bad_Bucket/x")
    with pytest.raises(InputFileError):
        sync_to_cache(tmp_path / "not-here", tmp_path / "cache")
    assert sync_to_cache(tmp_path, tmp_path / "cache") == tmp_path  # local paths pass through


def test_hostile_key_cannot_escape_cache(s3, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="evil/../../escape.txt", Body=b"x")
    with pytest.raises(DataError, match="cannot be stored safely"):
        sync_to_cache(f"s3://{bucket}/evil", tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()


def test_missing_credentials(no_aws_env: None, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    with pytest.raises(StorageError, match="no AWS credentials"):
        sync_to_cache("s3://some-bucket/key", tmp_path / "cache")


def test_endpoint_down_fails_fast_without_partial_cache(s3_env: str, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as info:
        sync_to_cache("s3://some-bucket/data/file.bin", tmp_path / "cache")
    assert time.monotonic() - started < 15
    assert info.value.exit_code == 6
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_endpoint_from_aws_endpoint_url(s3, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    endpoint = os.environ.pop("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3.put_object(Bucket=bucket, Key="k.bin", Body=b"ok")
    assert sync_to_cache(f"s3://{bucket}/k.bin", tmp_path / "cache").read_bytes() == b"ok"


def test_job_results_are_uploaded_when_results_root_is_s3(s3, bucket: str, backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 2}, "results_dir": f"s3://{bucket}/jobs/run"})
    status = backend.wait(job_id, timeout=60, poll=0.1)
    assert status["status"] == "Done", status["reason"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="jobs/run/")["Contents"])
    assert "jobs/run/model_epoch_001_step_00020.pth" in keys
    assert backend.list_checkpoints(job_id)[-1] == "model_epoch_001_step_00020.pth"


def test_job_fails_when_results_bucket_is_missing(s3_env: str, backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {}, "results_dir": "s3://no-such-results-bucket/run"})
    status = backend.wait(job_id, timeout=60, poll=0.1)
    assert status["status"] == "Error" and "upload failed" in status["reason"]
    assert "does not exist" in status["reason"]


def test_slow_endpoint_times_out_after_bounded_retries(s3_env: str, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """An endpoint that accepts connections and never answers: read timeouts, 2 attempts, then a clear error."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)  # hold it open, say nothing

    threading.Thread(target=accept_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("SPARSE4D_S3_READ_TIMEOUT", "0.5")
    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match="unreachable after retries"):
            sync_to_cache("s3://slow-bucket/file.bin", tmp_path / "cache")
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert time.monotonic() - started < 10
    assert len(accepted) == 2  # SPARSE4D_S3_MAX_ATTEMPTS=2: one try and one retry, no more
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
