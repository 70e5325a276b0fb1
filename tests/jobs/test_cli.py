"""`runner job ...`: JSON on stdout, documented exit codes."""
from __future__ import annotations

import json

from click.testing import CliRunner

from sparse4d.jobs.backend import JobBackend
from sparse4d.jobs.cli import job


def _run(backend: JobBackend, *args: str):
    runner = CliRunner()
    return runner.invoke(job, ["--jobs-root", str(backend.root), *args])


def test_status_wait_checkpoints_logs_json(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 2}})
    waited = _run(backend, "wait", job_id, "--json", "--poll", "0.05", "--timeout", "30")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["status"] == "Done"
    status = json.loads(_run(backend, "status", job_id, "--json").stdout)
    assert status["id"] == job_id and status["metric"] == 0.2
    ckpts = json.loads(_run(backend, "checkpoints", job_id, "--json").stdout)
    assert ckpts["checkpoints"] == ["model_epoch_000_step_00010.pth", "model_epoch_001_step_00020.pth"]
    results = json.loads(_run(backend, "results-dir", job_id, "--json").stdout)
    assert results["results_dir"] == str(backend.root / job_id / "results")
    logs = json.loads(_run(backend, "logs", job_id, "--json", "--tail", "2").stdout)
    assert logs["log"].count("\n") == 2
    listed = json.loads(_run(backend, "list", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert job_id in _run(backend, "list").stdout


def test_wait_on_failed_job_exits_1(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"exit_code": 5}})
    result = _run(backend, "wait", job_id, "--json", "--poll", "0.05")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "Error"


def test_wait_timeout_exits_1_and_cancel(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 100, "sleep": 0.2}})
    result = _run(backend, "wait", job_id, "--json", "--timeout", "0.2", "--poll", "0.05")
    assert result.exit_code == 1 and json.loads(result.stdout)["timed_out"] is True
    canceled = _run(backend, "cancel", job_id, "--json", "--grace", "5")
    assert canceled.exit_code == 0 and json.loads(canceled.stdout)["status"] == "Canceled"


def test_unknown_or_hostile_job_id_exits_4(backend: JobBackend) -> None:
    for bad in ("0" * 32, "../../etc/passwd"):
        result = _run(backend, "status", bad, "--json")
        assert result.exit_code == 4
        assert json.loads(result.stdout)["ok"] is False
        assert "error:" in result.stderr


def test_usage_error_exits_2(backend: JobBackend) -> None:
    assert _run(backend, "status").exit_code == 2
    assert _run(backend, "logs", "abc", "--tail", "-1").exit_code == 2
