"""Fixtures for the job backend and storage tests: a fake trainer, a jobs root, a real S3 endpoint."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from sparse4d.jobs.backend import JobBackend

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobBackend:
    monkeypatch.setenv("SPARSE4D_TRAINER", f"{sys.executable} {FAKE_TRAINER}")
    monkeypatch.setenv("SPARSE4D_JOBS_ROOT", str(tmp_path / "jobs"))
    return JobBackend(tmp_path / "jobs")


def _clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SPARSE4D_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SPARSE4D_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("SPARSE4D_S3_READ_TIMEOUT", "5")


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials and the moto endpoint in the environment; returns the endpoint URL."""
    _clean_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-access-key-0001")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def bucket(s3_env: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return name
