"""Secrets given by environment (SPARSE4D_ENCRYPTION_KEY, AWS keys, WANDB_API_KEY) or by `-o encryption_key=...`
never appear in what `runner plan` / `runner launch` print, nor in any file a launched job writes
(job.json, spec.yaml, log, status.json, checkpoints, CSV logs), scanned byte by byte."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparse4d.config.convert import AICityConfig
from sparse4d.data.convert import run_dataset_convert
from sparse4d.data.synth import make_synthetic_dataset
from .tiny_training import NUM_ANCHOR, child_env, tiny_train_overrides, write_spec

SECRETS = {
    "SPARSE4D_ENCRYPTION_KEY": "env-encryption-key-5a7c19",
    "AWS_ACCESS_KEY_ID": "AKIARELIABILITY0042",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-0b3d8e",
    "WANDB_API_KEY": "wandb-api-key-e4f1a2",
}
OVERRIDE_KEY = "override-encryption-key-77c2d0"
ALL_SECRETS = [*SECRETS.values(), OVERRIDE_KEY]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("reliability_secrets")
    root = make_synthetic_dataset(folder / "aicity", scenes=1, cameras=1, frames=6, size=(128, 64), seed=9, splits=("train", "val", "test"))
    converted = folder / "converted"
    for split in ("train", "val", "test"):
        config = AICityConfig.model_validate({"root": str(root), "split": split, "anchor_init_config": {"num_anchor": NUM_ANCHOR}})
        run_dataset_convert(config, converted)
    names = {"root": root, "ann": next((converted / "train").glob("*.pkl")), "anchor": converted / "anchor_init.npy"}
    values = tiny_train_overrides(names, folder / "unused", **{"train.checkpoint_interval_unit": "epoch",
                                                                "train.num_epochs": 1, "train.validation_interval": 1})
    values["results_dir"] = ""  # the job backend picks <job>/results
    spec = write_spec(folder / "tiny.yaml", values)
    assert not any(secret in spec.read_text() for secret in ALL_SECRETS)
    return {"folder": folder, "root": root, "converted": converted, "spec": spec}


def runner(setup: dict, work: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    work.mkdir(exist_ok=True)
    env = child_env(**SECRETS, HOME=str(work / "home"), SPARSE4D_JOBS_ROOT=str(work / "jobs"),
                    SPARSE4D_CACHE_DIR=str(work / "cache"))
    return subprocess.run([sys.executable, "-m", "sparse4d.cli.runner", *args], capture_output=True, text=True, cwd=work,
                          env=env, timeout=timeout)


def data_args(setup: dict) -> list[str]:
    return ["--train-root", str(setup["root"]), "--convert-dir", str(setup["converted"])]


def assert_no_secret(text: str, where: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text, f"{secret!r} printed/written in {where}"


def assert_no_secret_in_files(folder: Path) -> int:
    scanned = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for secret in ALL_SECRETS:
                assert secret.encode() not in data, f"{secret!r} written to {path}"
            scanned += 1
    return scanned


def test_plan_and_dry_run_print_no_secret(setup: dict, tmp_path: Path) -> None:
    secret_override = ["-o", f"encryption_key={OVERRIDE_KEY}"]
    calls = {
        "plan --json": ["plan", "train", *data_args(setup), *secret_override, "--json"],
        "plan": ["plan", "train", *data_args(setup), *secret_override],
        "launch --dry-run --json": ["launch", "train", "-e", str(setup["spec"]), "--automl-policy", "off", *data_args(setup),
                                    *secret_override, "-o", "wandb.enable=true", "--dry-run", "--json"],
        "launch --dry-run": ["launch", "train", "-e", str(setup["spec"]), "--automl-policy", "off", *data_args(setup),
                             *secret_override, "--dry-run"],
        "validate --launch": ["validate", "spec", "train", str(setup["spec"]), *secret_override, "--launch", "--json"],
        "bad secret key": ["launch", "train", "-e", str(setup["spec"]), *data_args(setup),
                           "-o", f"train.aws_secret_access_key={SECRETS['AWS_SECRET_ACCESS_KEY']}", "--dry-run", "--json"],
    }
    for name, args in calls.items():
        done = runner(setup, tmp_path, *args)
        assert_no_secret(done.stdout + done.stderr, name)
        assert "Traceback" not in done.stderr, name
        if name == "bad secret key":
            assert done.returncode == 3 and "train.aws_secret_access_key" in done.stdout
            continue
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-2000:])
        if name == "plan --json":
            plan = json.loads(done.stdout)
            assert plan["spec_overrides"]["encryption_key"] == "***"  # masked, yet visible as set
        if name == "launch --dry-run --json":
            doc = json.loads(done.stdout)
            assert doc["valid"] and not doc["launched"] and doc["spec"]["encryption_key"] == "***"
    assert_no_secret_in_files(tmp_path)


@pytest.mark.slow
def test_launched_job_writes_no_secret(setup: dict, tmp_path: Path) -> None:
    done = runner(setup, tmp_path, "launch", "train", "-e", str(setup["spec"]), "--automl-policy", "off", *data_args(setup),
                  "-o", f"encryption_key={OVERRIDE_KEY}", "--wait", "--timeout", "200", "--json", timeout=260)
    assert_no_secret(done.stdout + done.stderr, "launch --wait")
    doc = json.loads(done.stdout)
    assert doc["status"]["status"] == "Done", doc
    results = Path(doc["results_dir"])
    assert list(results.glob("model_epoch_*.pth")) and (results.parent / "job.json").is_file()
    assert (results.parent / "log").stat().st_size > 0
    assert assert_no_secret_in_files(tmp_path) >= 8
