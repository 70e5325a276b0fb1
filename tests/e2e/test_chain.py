"""Issue 7 chains: convert -> train -> evaluate -> export where each step names only its parent job,
locally and with data and results on a real S3 endpoint (moto's server on 127.0.0.1)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from sparse4d.cli.demo import demo_overrides
from sparse4d.cli.launch import LaunchRequest, launch
from sparse4d.data.synth import make_synthetic_dataset
from sparse4d.jobs.backend import JobBackend
from sparse4d.skill.checkpoints import parse_checkpoint

pytestmark = pytest.mark.slow

SECRET = "e2e-secret-key-9f8e7d6c"


def _small(epochs: int = 1) -> list[str]:
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) else v}" for k, v in demo_overrides(epochs).items()]


def _done(doc: dict) -> dict:
    assert doc.get("launched"), doc.get("errors") or doc.get("message")
    assert doc["status"]["status"] == "Done", doc["status"]
    return doc


def _run_chain(roots: dict[str, str], jobs: str, *, convert_results: str | None = None) -> dict[str, dict]:
    small = _small()
    model_keys = [o for o in small if not o.startswith("train.")]
    anchors = demo_overrides(1)["model.head.instance_bank.num_anchor"]
    convert_over = ["aicity.split=train,val,test", f"aicity.anchor_init_config.num_anchor={anchors}"]
    if convert_results:
        convert_over.append(f"results_dir={convert_results}")
    convert = _done(launch(LaunchRequest("dataset_convert", roots={"train_datasets": roots["train_datasets"]}, overrides=convert_over, jobs_root=jobs), wait=True))
    source = {"convert_dir": convert_results} if convert_results else {"convert_job_id": convert["job_id"]}
    train = _done(launch(LaunchRequest("train", roots=roots, overrides=small, automl_policy="off", jobs_root=jobs, **source), wait=True))
    evaluate = _done(launch(LaunchRequest("evaluate", roots=roots, parent_job_id=train["job_id"], overrides=model_keys, jobs_root=jobs, **source), wait=True))
    export = _done(launch(LaunchRequest("export", roots=roots, parent_job_id=train["job_id"], overrides=model_keys + ["export.input_width=256", "export.input_height=128", "export.on_cpu=true"], jobs_root=jobs, **source), wait=True))
    return {"convert": convert, "train": train, "evaluate": evaluate, "export": export}


def _check_chain(chain: dict[str, dict], jobs: str) -> None:
    backend = JobBackend(jobs)
    train_ckpts = [c for c in backend.list_checkpoints(chain["train"]["job_id"]) if parse_checkpoint(c)]
    assert train_ckpts, "train wrote no model_epoch_XXX_step_YYYYY.pth"
    best = max(train_ckpts, key=parse_checkpoint)
    expected = str(backend.get_job_results_dir(chain["train"]["job_id"]) / best)
    assert chain["evaluate"]["spec"]["evaluate"]["checkpoint"] == expected
    assert chain["export"]["spec"]["export"]["checkpoint"] == expected
    for step in ("evaluate", "export"):
        record = backend.get_job_status(chain[step]["job_id"])
        assert record["parent_job_id"] == chain["train"]["job_id"]
    assert chain["evaluate"]["status"]["metric"] is not None
    assert list(Path(chain["export"]["results_dir"]).glob("*.onnx"))
    # The encryption key travels by environment only: no file any job wrote contains it.
    for path in Path(jobs).rglob("*"):
        if path.is_file() and path.suffix not in (".pth", ".onnx", ".npy", ".pkl", ".jpg", ".png", ".h5", ".mp4"):
            assert SECRET not in path.read_text(errors="ignore"), path


def test_local_chain_names_only_parent_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE4D_ENCRYPTION_KEY", SECRET)
    data = make_synthetic_dataset(tmp_path / "aicity", scenes=1, cameras=2, frames=12, size=(256, 128), seed=1, splits=("train", "val", "test"))
    roots = {"train_datasets": str(data), "eval_dataset": str(data), "inference_dataset": str(data)}
    jobs = str(tmp_path / "jobs")
    _check_chain(_run_chain(roots, jobs), jobs)


def test_s3_chain_with_data_and_results_on_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    import boto3

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAE2EFAKE00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "e2e-fake-secret-access-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv("SPARSE4D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARSE4D_ENCRYPTION_KEY", SECRET)
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    data = make_synthetic_dataset(tmp_path / "aicity", scenes=1, cameras=2, frames=12, size=(256, 128), seed=2, splits=("train", "val", "test"))
    for path in data.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"data/{path.relative_to(data).as_posix()}")
    root = f"s3://{bucket}/data"
    roots = {"train_datasets": root, "eval_dataset": root, "inference_dataset": root}
    jobs = str(tmp_path / "jobs")
    chain = _run_chain(roots, jobs, convert_results=f"s3://{bucket}/results/convert")
    _check_chain(chain, jobs)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="results/convert/")["Contents"]}
    assert "results/convert/anchor_init.npy" in keys
    spec = yaml.safe_load((Path(jobs) / chain["train"]["job_id"] / "spec.yaml").read_text())
    assert spec["dataset"]["data_root"].startswith(str(tmp_path / "cache"))
