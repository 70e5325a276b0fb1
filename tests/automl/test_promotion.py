"""Promoted resume jobs: explicit checkpoints, carried metrics only when the resume checks pass."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparse4d.automl.promotion import check_checkpoint_file, launch_rung_job, rung_checkpoint, settle_rung_job
from sparse4d.automl.study import Controller, StudyConfig, create_or_load_study, open_storage
from sparse4d.config.loading import read_spec_file
from sparse4d.jobs.backend import JobBackend


def _train(backend: JobBackend, epochs: int, resume: Path | None = None, parent: str | None = None, lr=1e-4) -> str:
    spec = {"train": {"num_epochs": epochs, "optim": {"lr": lr},
                      "resume_training_checkpoint_path": str(resume) if resume else ""}}
    job = backend.create_job("train", spec, parent, force=True)
    assert backend.wait(job, timeout=60, poll=0.05)["status"] == "Done", backend.get_job_logs(job)
    return job


def test_rung_job_recorded_by_a_dead_controller_is_started_once(tmp_path, fake_trainer_env):
    backend = JobBackend(tmp_path / "jobs")
    spec = {"train": {"num_epochs": 1}}
    recorded, _ = backend.submit("train", spec, name="study-t0000-r0", force=True, launch=False)
    backend.store.update(recorded, lambda r: {**r, "launch_requested": True})  # the controller died here
    assert launch_rung_job(backend, spec, name="study-t0000-r0", parent_job_id=None) == (recorded, False)
    assert backend.wait(recorded, timeout=60, poll=0.05)["status"] == "Done"
    assert launch_rung_job(backend, spec, name="study-t0000-r0", parent_job_id=None) == (recorded, False)
    assert len(fake_trainer_env.read_text().splitlines()) == 1


@pytest.fixture
def source(tmp_path, fake_trainer_env):
    backend = JobBackend(tmp_path / "jobs")
    job = _train(backend, 1)
    checkpoint, epoch, step = rung_checkpoint(backend, job, 1)
    assert (epoch, step) == (0, 10) and checkpoint.name == "model_epoch_000_step_00010.pth"
    return backend, job, checkpoint, backend.get_job_status(job)["metric"]


def test_fresh_metric_of_a_promoted_job(source):
    backend, job, checkpoint, metric = source
    promoted = _train(backend, 2, checkpoint, job)
    out = settle_rung_job(backend, promoted, epochs=2, resume_from=checkpoint, source_metric=metric, source_job_id=job)
    assert out.ok and out.metric_source == "fresh" and out.metric > metric
    assert out.resume_evidence == "spec and log" and (out.epoch, out.step) == (1, 20)


def test_promoted_job_without_metric_carries_the_source_metric(source, monkeypatch):
    backend, job, checkpoint, metric = source
    monkeypatch.setenv("FAKE_NO_METRIC_ON_RESUME", "1")
    promoted = _train(backend, 3, checkpoint, job)
    assert backend.get_job_status(promoted)["metric"] is None
    loaded = []
    out = settle_rung_job(backend, promoted, epochs=3, resume_from=checkpoint, source_metric=metric,
                          source_job_id=job, loader=loaded.append)
    assert out.ok and out.metric == metric and out.metric_source == f"carried from {job}"
    assert out.checkpoint and Path(out.checkpoint).name == "model_epoch_002_step_00030.pth"
    assert loaded == [Path(out.checkpoint)]  # the caller's loader saw the new checkpoint

    def broken(path: Path) -> None:
        raise ValueError("unexpected key 'foo'")

    out = settle_rung_job(backend, promoted, epochs=3, resume_from=checkpoint, source_metric=metric,
                          source_job_id=job, loader=broken)
    assert not out.ok and "does not load" in out.reason and out.metric is None
    # the job resumed from another checkpoint than the source rung's: no carry
    other = checkpoint.with_name("model_epoch_000_step_00011.pth")
    out = settle_rung_job(backend, promoted, epochs=3, resume_from=other, source_metric=metric, source_job_id=job)
    assert not out.ok and "not the source checkpoint" in out.reason
    # nothing to carry
    out = settle_rung_job(backend, promoted, epochs=3, resume_from=checkpoint, source_metric=None, source_job_id=job)
    assert not out.ok and "no val_mAP" in out.reason
    # the asked budget has no checkpoint
    out = settle_rung_job(backend, promoted, epochs=5, resume_from=checkpoint, source_metric=metric, source_job_id=job)
    assert not out.ok and "no checkpoint for 5 epochs" in out.reason


def test_promoted_job_with_a_fake_checkpoint_is_not_carried(source, monkeypatch):
    backend, job, checkpoint, metric = source
    monkeypatch.setenv("FAKE_NO_METRIC_ON_RESUME", "1")
    monkeypatch.setenv("FAKE_BAD_CHECKPOINT", "1")
    promoted = _train(backend, 2, checkpoint, job)
    out = settle_rung_job(backend, promoted, epochs=2, resume_from=checkpoint, source_metric=metric, source_job_id=job)
    assert not out.ok and "not a torch zip archive" in out.reason


def test_checkpoint_file_checks(tmp_path):
    assert "cannot be read" in check_checkpoint_file(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "is empty" in check_checkpoint_file(empty)


def test_study_carries_metrics_through_quiet_promotions(tmp_path, spec_file, fake_trainer_env, monkeypatch):
    monkeypatch.setenv("FAKE_NO_METRIC_ON_RESUME", "1")
    backend = JobBackend(tmp_path / "jobs")
    config = StudyConfig(study="quiet", spec=read_spec_file(spec_file), algorithm="asha", max_trials=2, rungs=2,
                         reduction_factor=2, max_epochs=2, seed=0)
    study, config = create_or_load_study(open_storage(None, backend.root, "quiet"), config, "quiet")
    summary = Controller(study, config, backend, poll=0.1, loader=lambda p: None).run()
    first = summary["trials"][0]
    assert first["state"] == "COMPLETE" and len(first["runs"]) == 2
    assert first["runs"][1]["metric_source"] == f"carried from {first['runs'][0]['job_id']}"
    assert first["value"] == first["runs"][0]["metric"]
    assert summary["best"]["metric_source"].startswith("carried from")

    def refuse(path: Path) -> None:
        raise RuntimeError("truncated archive")

    study2, config2 = create_or_load_study(open_storage(None, backend.root, "quiet2"),
                                           StudyConfig(**{**config.__dict__, "study": "quiet2"}), "quiet2")
    summary = Controller(study2, config2, backend, poll=0.1, loader=refuse).run()
    # every rung's checkpoint goes through the loader: nothing that fails to load is ever handed on
    assert all(t["state"] == "FAIL" and "does not load" in t["fail_reason"] for t in summary["trials"])
    assert summary["best"] is None
