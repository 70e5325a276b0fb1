"""AutoML studies on the real job backend with the fake trainer: ASHA with promotions, best, restart."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sparse4d.automl.study import Controller, StudyConfig, best_trial, create_or_load_study, open_storage
from sparse4d.config.loading import read_spec_file
from sparse4d.jobs.backend import JobBackend
from sparse4d.skill.checkpoints import parse_checkpoint, select_parent_model

from .conftest import REPO


def _config(spec_file: Path, study: str, **options) -> StudyConfig:
    base = dict(study=study, spec=read_spec_file(spec_file), overrides={"dataset.data_root": "/data/override"},
                algorithm="asha", max_trials=4, rungs=3, reduction_factor=2, seed=3, verify_load=False)
    base.update(options)
    return StudyConfig(**base)


def _job_names(backend: JobBackend) -> list[str]:
    return [r["name"] for r in backend.store.list()]


def test_asha_study_promotes_and_best_gives_an_evaluable_checkpoint(tmp_path, spec_file, fake_trainer_env):
    backend = JobBackend(tmp_path / "jobs")
    storage = open_storage(None, backend.root, "asha")
    study, config = create_or_load_study(storage, _config(spec_file, "asha"), "asha")
    assert (backend.root / "automl" / "asha.journal").is_file()
    summary = Controller(study, config, backend, poll=0.1).run()

    assert summary["finished"] and len(summary["trials"]) == 4
    runs = [r for t in summary["trials"] for r in t["runs"]]
    promoted = [r for r in runs if r["resume_from"]]
    assert promoted, "ASHA with 4 trials promotes at least the first trial"
    for run in promoted:  # resumed from an explicit epoch/step checkpoint, never *latest*
        assert parse_checkpoint(run["resume_from"]) is not None and "latest" not in run["resume_from"]
        spec = yaml.safe_load((backend.store.job_dir(run["job_id"]) / "spec.yaml").read_text())
        assert spec["train"]["resume_training_checkpoint_path"] == run["resume_from"]
        assert spec["train"]["num_epochs"] == run["epochs"]
    for trial in summary["trials"]:  # the user's data source, GPUs and parent checkpoint reach every job
        for run in trial["runs"]:
            spec = yaml.safe_load((backend.store.job_dir(run["job_id"]) / "spec.yaml").read_text())
            assert spec["dataset"]["data_root"] == "/data/override"
            assert spec["train"]["gpu_ids"] == [0] and spec["train"]["pretrained_model_path"] == "/models/pretrained.pth"
            assert spec["train"]["optim"]["lr"] == trial["params"]["train.optim.lr"]
    states = {t["state"] for t in summary["trials"]}
    assert "COMPLETE" in states and "PRUNED" in states
    # one job per (trial, rung), each launched once
    names = _job_names(backend)
    assert len(names) == len(set(names)) == len(runs)
    assert len(fake_trainer_env.read_text().splitlines()) == len(runs)

    best = best_trial(study)
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert best["value"] == max(t["value"] for t in complete)
    assert best["epoch"] == 3 and best["step"] == 40  # 4 epochs, zero-indexed file names
    choice = select_parent_model("evaluate", backend.list_checkpoints(best["job_id"]))
    assert str(backend.get_job_results_dir(best["job_id"]) / choice.name) == best["checkpoint"]
    # the metric came from the job's status.json through the val_mAP aliases
    assert backend.get_job_status(best["job_id"])["metric"] == pytest.approx(best["value"])


def test_bayesian_runs_each_trial_once_at_full_budget(tmp_path, spec_file, fake_trainer_env):
    backend = JobBackend(tmp_path / "jobs")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'shared.db'}")  # the multi-host path
    study, config = create_or_load_study(storage, _config(spec_file, "tpe", algorithm="bayesian", max_trials=3), "tpe")
    summary = Controller(study, config, backend, poll=0.1).run()
    assert [len(t["runs"]) for t in summary["trials"]] == [1, 1, 1]
    assert all(t["runs"][0]["epochs"] == 4 and t["state"] == "COMPLETE" for t in summary["trials"])
    # a second controller (another host would do the same) sees the finished study and runs nothing
    again, _ = create_or_load_study(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'shared.db'}"), None, "tpe")
    controller = Controller(again, config, backend, poll=0.1)
    controller.run()
    assert controller.launched == []


def test_changed_options_for_an_existing_study_are_refused(tmp_path, spec_file):
    backend = JobBackend(tmp_path / "jobs")
    storage = open_storage(None, backend.root, "s")
    create_or_load_study(storage, _config(spec_file, "s"), "s")
    from sparse4d.errors import SpecError

    with pytest.raises(SpecError, match="different"):
        create_or_load_study(storage, _config(spec_file, "s", max_trials=9), "s")
    with pytest.raises(SpecError, match="both fixed with -o and searched") as err:
        create_or_load_study(storage, _config(spec_file, "t", overrides={"train.optim.lr": 1e-4}), "t")
    assert err.value.key == "train.optim.lr"


def _cli(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "sparse4d.automl.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_controller_restarts_without_rerunning_trials(tmp_path, spec_file, fake_trainer_env):
    jobs = tmp_path / "jobs"
    env = {**os.environ, "FAKE_SLEEP": "0.4"}
    args = ["start", str(spec_file), "--study", "k", "--jobs-root", str(jobs), "--max-trials", "4", "--rungs", "3",
            "--reduction-factor", "2", "--parallel", "2", "--seed", "1", "--no-verify-load", "--poll", "0.1", "--json"]
    first = _cli(args, env)
    deadline = time.monotonic() + 60
    # kill it once a promotion has been launched (a rung-1 job exists) and jobs are in flight
    while time.monotonic() < deadline:
        names = [r["name"] for r in JobBackend(jobs).store.list()] if jobs.is_dir() else []
        if any(n.endswith("rung1") for n in names):
            break
        time.sleep(0.1)
    else:
        first.kill()
        pytest.fail("no promotion within 60 s: " + first.communicate()[1][-2000:])
    first.send_signal(signal.SIGKILL)
    first.communicate()
    before = {r["id"]: r["status"] for r in JobBackend(jobs).store.list()}

    second = _cli(["start", "--study", "k", "--jobs-root", str(jobs), "--poll", "0.1", "--json"], env)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    doc = json.loads(out)
    assert doc["finished"] and len(doc["trials"]) == 4
    # jobs the killed controller had launched were picked up, not launched again
    assert set(doc["reattached_jobs"]) <= set(before)
    assert not set(doc["launched_jobs"]) & set(before)
    in_flight = {j for j, state in before.items() if state in ("Pending", "Running")}
    assert in_flight <= set(doc["reattached_jobs"])
    backend = JobBackend(jobs)
    names = _job_names(backend)
    runs = [r for t in doc["trials"] for r in t["runs"]]
    assert len(names) == len(set(names)) == len(runs), "a (trial, rung) ran twice"
    launches = fake_trainer_env.read_text().splitlines()
    assert len(launches) == len(set(launches)), "a job's trainer ran twice"
    assert len(launches) == len(runs), "a job recorded by the killed controller never ran its trainer"
    assert {r["job_id"] for r in runs} == {r["id"] for r in backend.store.list()}
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in doc["trials"])
    # the restarted sampler does not replay the configurations the first controller already tried
    assert len({json.dumps(t["params"], sort_keys=True) for t in doc["trials"]}) == 4

    best = _cli(["best", "--study", "k", "--jobs-root", str(jobs), "--json"], env)
    out, _ = best.communicate(timeout=60)
    assert best.returncode == 0
    assert json.loads(out)["job_id"] in {r["job_id"] for r in runs}


def test_cli_refuses_disabled_param_with_exit_code_3(tmp_path, spec_file):
    proc = _cli(["start", str(spec_file), "--study", "x", "--jobs-root", str(tmp_path / "jobs"),
                 "--param", "train.num_epochs", "--json"], dict(os.environ, PYTHONPATH=str(REPO)))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert json.loads(out)["error"]["key"] == "train.num_epochs"
    proc = _cli(["best", "--study", "nope", "--jobs-root", str(tmp_path / "jobs"), "--json"],
                dict(os.environ, PYTHONPATH=str(REPO)))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "no AutoML study" in json.loads(out)["error"]["message"]


def test_hyperband_brackets_and_detached_stop(tmp_path, spec_file, fake_trainer_env):
    jobs = tmp_path / "jobs"
    env = {**os.environ, "FAKE_SLEEP": "1.0"}
    proc = _cli(["start", str(spec_file), "--study", "hb", "--jobs-root", str(jobs), "--algorithm", "hyperband",
                 "--max-trials", "6", "--reduction-factor", "2", "--min-epochs", "1", "--seed", "0",
                 "--no-verify-load", "--poll", "0.1", "--detach", "--json"], env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["detached"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (jobs.is_dir() and JobBackend(jobs).store.list()):
        time.sleep(0.1)
    stop = _cli(["stop", "--study", "hb", "--jobs-root", str(jobs), "--wait", "30", "--json"], env)
    out, err = stop.communicate(timeout=90)
    assert stop.returncode == 0, err
    assert json.loads(out)["controller_alive"] is False
    status = _cli(["status", "--study", "hb", "--jobs-root", str(jobs), "--json"], env)
    doc = json.loads(status.communicate(timeout=60)[0])
    assert doc["stop_requested"] and doc["controller"]["alive"] is False
    assert doc["trials"] and all(t["state"] != "RUNNING" for t in doc["trials"])
    assert {t["bracket"] for t in doc["trials"]} <= {0, 1, 2}
    assert all(t["rungs"] == [1, 2, 4][t["bracket"]:] for t in doc["trials"])
    stopped = [t for t in doc["trials"] if t["state"] == "FAIL"]
    assert stopped and all(t["fail_reason"] == "stopped by request" for t in stopped)
    assert all(JobBackend(jobs).get_job_status(r["id"])["finished"] for r in JobBackend(jobs).store.list())
