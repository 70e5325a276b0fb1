"""AutoML with the real trainer (`sparse4d train`) on a tiny synthetic scene: promotion and best."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sparse4d.automl.study import Controller, StudyConfig, best_trial, create_or_load_study, open_storage
from sparse4d.jobs.backend import JobBackend
from sparse4d.skill.checkpoints import select_parent_model

from .conftest import REPO

pytestmark = pytest.mark.slow


def _bench_module():
    spec = importlib.util.spec_from_file_location("automl_vs_default", REPO / "benchmarks" / "automl_vs_default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_asha_with_real_trainer(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSE4D_TRAINER", raising=False)  # python -m sparse4d.cli.trainer
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = _bench_module().synthetic_train_spec(tmp_path, epochs=2)
    backend = JobBackend(tmp_path / "jobs")
    config = StudyConfig(study="real", spec=spec, algorithm="asha", max_trials=2, max_epochs=2, rungs=2,
                         reduction_factor=2, seed=0, verify_load=True)
    study, config = create_or_load_study(open_storage(None, backend.root, "real"), config, "real")
    summary = Controller(study, config, backend, poll=1.0).run()
    first = summary["trials"][0]
    assert first["state"] == "COMPLETE", first
    rung0, rung1 = first["runs"]
    assert Path(rung1["resume_from"]).name == Path(rung0["checkpoint"]).name  # explicit epoch/step file
    assert "latest" not in rung1["resume_from"]
    best = best_trial(study)
    choice = select_parent_model("evaluate", backend.list_checkpoints(best["job_id"]))
    assert str(backend.get_job_results_dir(best["job_id"]) / choice.name) == best["checkpoint"]
    assert best["epoch"] in (1, 2)  # the 2nd epoch, whether the trainer numbers epochs from 0 or 1
