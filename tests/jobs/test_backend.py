"""The local job backend end to end, with a real (fake) trainer process per job."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from sparse4d.jobs import processes
from sparse4d.jobs.backend import JobBackend, WaitTimeout
from sparse4d.jobs.store import (
    CANCELED,
    DONE,
    ERROR,
    PENDING,
    RUNNING,
    StateError,
    UnknownJobError,
)



def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_lifecycle_pending_running_done(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 3}}, name="first")
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == DONE and status["exit_code"] == 0 and status["finished"]
    assert [h["status"] for h in status["history"]] == [PENDING, RUNNING, DONE]
    assert status["metric"] == pytest.approx(0.3)
    assert status["last_event"]["status"] == "SUCCESS"
    results = backend.get_job_results_dir(job_id)
    assert results == backend.root / job_id / "results"
    assert backend.list_checkpoints(job_id) == [
        "model_epoch_000_step_00010.pth", "model_epoch_001_step_00020.pth", "model_epoch_002_step_00030.pth"]
    spec = yaml.safe_load((backend.root / job_id / "spec.yaml").read_text())
    assert spec["results_dir"] == str(results)
    log = backend.get_job_logs(job_id)
    assert "action=train" in log and "job Done" in log
    assert backend.get_job_logs(job_id, tail=1).count("\n") == 1


def test_record_is_written_before_launch(backend: JobBackend) -> None:
    job_id = backend.create_job("evaluate", {"fake": {}}, launch=False)
    folder = backend.root / job_id
    assert json.loads((folder / "job.json").read_text())["status"] == PENDING
    assert (folder / "spec.yaml").is_file() and (folder / "results").is_dir()
    assert backend.get_job_status(job_id)["status"] == PENDING
    backend.launch(job_id)
    assert backend.wait(job_id, timeout=30, poll=0.05)["status"] == DONE


def test_nonzero_exit_is_error_with_reason(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"exit_code": 3}})
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == ERROR and status["exit_code"] == 3
    assert "exited with code 3" in status["reason"]


def test_failure_event_is_error_even_with_exit_zero(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"fail_status": True}})
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == ERROR and status["exit_code"] == 0
    assert "loss is NaN" in status["reason"]


def test_missing_trainer_executable_is_error(backend: JobBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE4D_TRAINER", "/nonexistent/trainer-binary")
    job_id = backend.create_job("train", {})
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == ERROR and "could not start the trainer" in status["reason"]


def test_cancel_stops_a_running_job(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 100, "sleep": 0.2}})
    _wait_for(lambda: backend.get_job_status(job_id)["status"] == RUNNING)
    trainer = backend.get_job_status(job_id)["trainer"]
    assert processes.is_alive(trainer)
    started = time.monotonic()
    status = backend.cancel_job(job_id, grace=10)
    assert status["status"] == CANCELED
    assert time.monotonic() - started < 8
    assert not processes.is_alive(trainer)
    assert len(backend.list_checkpoints(job_id)) < 100


def test_cancel_escalates_to_sigkill(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 100, "sleep": 0.2, "ignore_term": True}})
    _wait_for(lambda: backend.get_job_status(job_id)["status"] == RUNNING)
    trainer = backend.get_job_status(job_id)["trainer"]
    status = backend.cancel_job(job_id, grace=0.5)
    assert status["status"] == CANCELED
    assert not processes.is_alive(trainer)


def test_cancel_before_launch(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {}, launch=False)
    assert backend.cancel_job(job_id)["status"] == CANCELED


def test_finished_states_never_change(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {}})
    assert backend.wait(job_id, timeout=30, poll=0.05)["status"] == DONE
    with pytest.raises(StateError, match="final state"):
        backend.store.update(job_id, lambda r: {**r, "status": ERROR})
    assert backend.store.transition(job_id, ERROR, reason="late writer")["status"] == DONE
    assert backend.cancel_job(job_id)["status"] == DONE
    record = json.loads((backend.root / job_id / "job.json").read_text())
    assert record["status"] == DONE and record["reason"] is None


def test_duplicate_launch_returns_existing_job(backend: JobBackend) -> None:
    spec = {"fake": {"epochs": 1}, "train": {"num_epochs": 1}}
    first = backend.create_job("train", spec)
    assert backend.create_job("train", {"train": {"num_epochs": 1}, "fake": {"epochs": 1}}) == first  # key order
    assert backend.create_job("train", spec, force=True) != first
    assert backend.create_job("evaluate", spec) != first
    assert backend.create_job("train", spec, parent_job_id=first) != first
    for job in backend.list_jobs():
        backend.wait(job["id"], timeout=30, poll=0.05)


def test_duplicate_launch_starts_a_job_whose_launcher_died(backend: JobBackend) -> None:
    spec = {"fake": {"epochs": 1}}
    job_id = backend.create_job("train", spec, launch=False)
    backend.store.update(job_id, lambda r: {**r, "launch_requested": True})  # recorded, then the client died
    assert backend.create_job("train", spec) == job_id
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == DONE and [h["status"] for h in status["history"]] == [PENDING, RUNNING, DONE]


def test_racing_launches_run_the_trainer_once(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 4, "sleep": 0.2}}, launch=False)
    backend._launch(job_id, {})
    backend._launch(job_id, {})  # two supervisors; the one that loses the lock must not be taken for the runner
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == DONE, status["reason"]
    assert [h["status"] for h in status["history"]] == [PENDING, RUNNING, DONE]
    log = backend.get_job_logs(job_id)
    assert log.count("starting:") == 1 and "nothing to run" in log


def test_failed_job_is_relaunched_as_a_new_job(backend: JobBackend) -> None:
    spec = {"fake": {"exit_code": 1}}
    first = backend.create_job("train", spec)
    assert backend.wait(first, timeout=30, poll=0.05)["status"] == ERROR
    second = backend.create_job("train", spec)
    assert second != first
    backend.wait(second, timeout=30, poll=0.05)


@pytest.mark.parametrize("bad", ["../etc", "..", "a/b", "/abs", "", " x", "x" * 65, "a\x00b", "ok..", "-lead"])
def test_path_escaping_or_malformed_ids_are_refused(backend: JobBackend, bad: str) -> None:
    if bad == "ok..":
        bad = "ok/.."
    for call in (backend.get_job_status, backend.get_job_logs, backend.get_job_results_dir,
                 backend.list_checkpoints, backend.cancel_job):
        with pytest.raises(UnknownJobError, match="invalid job id"):
            call(bad)
    with pytest.raises(UnknownJobError):
        backend.create_job("train", {}, parent_job_id=bad)


def test_unknown_job_and_parent(backend: JobBackend) -> None:
    with pytest.raises(UnknownJobError, match="no job"):
        backend.get_job_status("0" * 32)
    with pytest.raises(UnknownJobError, match="no job"):
        backend.create_job("train", {}, parent_job_id="f" * 32)
    assert UnknownJobError("x").exit_code == 4


def test_dead_supervisor_is_detected(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 100, "sleep": 0.2}})
    _wait_for(lambda: backend.get_job_status(job_id)["status"] == RUNNING)
    record = backend.get_job_status(job_id)
    os.kill(record["supervisor"]["pid"], signal.SIGKILL)
    _wait_for(lambda: not processes.is_alive(record["supervisor"]))
    status = backend.get_job_status(job_id)
    assert status["status"] == ERROR and "supervisor" in status["reason"]
    _wait_for(lambda: not processes.is_alive(record["trainer"]))  # the orphaned trainer is stopped too


def test_wait_timeout_leaves_job_running(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 100, "sleep": 0.2}})
    with pytest.raises(WaitTimeout, match="still"):
        backend.wait(job_id, timeout=0.3, poll=0.05)
    assert backend.get_job_status(job_id)["status"] in (PENDING, RUNNING)
    backend.cancel_job(job_id, grace=5)


def test_follow_sees_every_event(backend: JobBackend) -> None:
    job_id = backend.create_job("train", {"fake": {"epochs": 3, "sleep": 0.05}})
    seen: list[str] = []
    backend.wait(job_id, timeout=30, poll=0.02, on_event=lambda e: seen.append(e["status"]))
    assert seen == ["STARTED", "RUNNING", "RUNNING", "RUNNING", "SUCCESS"]


def test_secrets_never_reach_any_written_file(backend: JobBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"encryption_key": "tlt-enc-KEY-98765", "WANDB_API_KEY": "wandb-secret-4242",
               "AWS_SECRET_ACCESS_KEY": "aws-secret-1357911", "AWS_ACCESS_KEY_ID": "AKIASECRETID2468"}
    for name in ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        monkeypatch.setenv(name, secrets[name])
    spec = {"encryption_key": secrets["encryption_key"],
            "fake": {"leak": True, "exit_code": 2},
            "wandb": {"api_token": "wandb-secret-4242"}}
    job_id = backend.create_job("train", spec, name="run with key")
    status = backend.wait(job_id, timeout=30, poll=0.05)
    assert status["status"] == ERROR
    folder = backend.root / job_id
    # the trainer did get the real key (through SPARSE4D_ENCRYPTION_KEY)
    assert (folder / "results" / "got_key.txt").read_text() == hashlib.sha256(secrets["encryption_key"].encode()).hexdigest()
    assert "my key is ***" in (folder / "log").read_text()
    written = [p for p in backend.root.rglob("*") if p.is_file()]
    assert len(written) >= 6
    for path in written:
        data = path.read_bytes()
        for value in secrets.values():
            assert value.encode() not in data, f"{value} leaked into {path}"
    printed = json.dumps(backend.get_job_status(job_id)) + backend.get_job_logs(job_id)
    assert not any(v in printed for v in secrets.values())


def _create_in_child(root: str, trainer: str, index: int, queue) -> None:
    os.environ["SPARSE4D_TRAINER"] = trainer
    backend = JobBackend(root)
    job_id = backend.create_job("train", {"fake": {"epochs": 1}, "variant": index % 5})
    queue.put((index, job_id))


def test_concurrent_create_from_ten_processes(backend: JobBackend, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_in_child,
                         args=(str(backend.root), os.environ["SPARSE4D_TRAINER"], i, queue)) for i in range(10)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    by_variant: dict[int, set[str]] = {}
    for index, job_id in results.items():
        by_variant.setdefault(index % 5, set()).add(job_id)
    assert all(len(ids) == 1 for ids in by_variant.values()), by_variant  # duplicates deduplicated
    ids = {next(iter(v)) for v in by_variant.values()}
    assert len(ids) == 5
    assert set(backend.store.list_ids()) == ids
    for job_id in ids:
        assert backend.wait(job_id, timeout=60, poll=0.1)["status"] == DONE
        json.loads((backend.root / job_id / "job.json").read_text())
    pointers = {p.read_text().strip() for p in (backend.root / ".index").iterdir()}
    assert pointers == ids
    assert not [p for p in backend.root.rglob("*.tmp")]
