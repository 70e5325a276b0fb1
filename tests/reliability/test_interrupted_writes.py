"""kill -9 during `sparse4d dataset_convert` and during job-record writes: nothing partial, reruns complete.

dataset_convert: at seeded random points (a delay, or right after the n-th extracted frame), the
process is killed; every file it left under a final name is byte-identical to a clean conversion's,
and a rerun completes with output byte-identical to the clean conversion and no temporary left.
Job store: a process creating and updating jobs in a loop is killed at seeded random times; every
job.json parses, no temporary is listed as a job, every index pointer names a readable job, and the
next create_job works.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse4d.data.safe_pickle import safe_load
from sparse4d.data.synth import make_synthetic_dataset
from sparse4d.jobs.backend import JobBackend
from sparse4d.jobs.store import JOB_ID_RE, STATES
from .tiny_training import child_env, run_trainer, trainer_command, write_spec

CONVERT_KILLS = 6
STORE_KILLS = 5


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name]


@pytest.fixture(scope="module")
def convert_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("reliability_convert")
    root = make_synthetic_dataset(folder / "aicity", scenes=2, cameras=3, frames=60, size=(320, 160), seed=5, splits=("train",))
    out = folder / "out"
    spec = write_spec(folder / "convert.yaml", {"results_dir": str(out), "aicity.root": str(root), "aicity.split": "train",
                                                "aicity.anchor_init_config.num_anchor": 16})
    started = time.monotonic()
    done = run_trainer("dataset_convert", spec)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    clean = snapshot(out)
    assert sum(name.endswith(".pkl") for name in clean) == 2 and "anchor_init.npy" in clean
    assert sum(name.endswith(".jpg") for name in clean) == 2 * 3 * 60
    assert not temporaries(out)
    return {"spec": spec, "out": out, "clean": clean, "duration": duration}


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def plant_temporaries(out: Path) -> list[Path]:
    """What kill -9 leaves in each kind of place (frames, pickles, anchors), plus a live writer's file last."""
    pid = dead_pid()
    camera = out / "train" / "frames" / "Warehouse_001" / "Camera_0002"
    camera.mkdir(parents=True, exist_ok=True)
    planted = [camera / f".000007.{pid}.tmp.jpg", camera / f".extracted.json.{pid}.tmp",
               out / "train" / f".Warehouse_000+bev-sensor-random-0_infos_train.pkl.{pid}.tmp",
               out / f".anchor_init.npy.{pid}.tmp", out / "train" / f".live.pkl.{os.getpid()}.tmp"]
    for path in planted:
        path.write_bytes(b"half written")
    return planted


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)


def test_killed_dataset_convert_reruns_to_identical_output(convert_setup: dict) -> None:
    out, clean = convert_setup["out"], convert_setup["clean"]
    rng = random.Random(404)
    killed = 0
    for round_index in range(CONVERT_KILLS):
        shutil.rmtree(out)
        proc = subprocess.Popen(trainer_command("dataset_convert", convert_setup["spec"]), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=out.parent, env=child_env())
        if round_index % 3 == 0:  # somewhere in the run, start-up included
            time.sleep(rng.uniform(0.2, 0.9 * convert_setup["duration"]))
        elif round_index % 3 == 1:  # right after the n-th frame file appears (frame extraction is most of the work)
            nth = rng.randint(1, 300)
            _wait_for(proc, lambda: out.is_dir() and sum(1 for _ in out.rglob("0*.jpg")) >= nth)
        else:  # as soon as a temporary is seen (often too late: each lives for a millisecond)
            _wait_for(proc, lambda: out.is_dir() and bool(temporaries(out)))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait(timeout=60) == -signal.SIGKILL
        planted = plant_temporaries(out) if round_index == 0 else []
        if out.is_dir():  # whatever it left under a final name is whole
            for name, data in snapshot(out).items():
                if ".tmp" not in name:
                    assert data == clean[name], f"round {round_index}: {name} differs from the clean conversion"
        rerun = run_trainer("dataset_convert", convert_setup["spec"])
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        if planted:  # a live writer's temporary is never touched; it is ours, so remove it now
            assert planted[-1].exists()
            planted.pop().unlink()
        assert not temporaries(out), f"round {round_index}: temporaries left: {temporaries(out)}"
        again = snapshot(out)
        assert sorted(again) == sorted(clean)
        differing = [name for name in clean if again[name] != clean[name]]
        assert not differing, f"round {round_index}: {differing[:5]}"
        safe_load(next(out.glob("train/*.pkl")))
    assert killed >= CONVERT_KILLS - 1  # (at most one early delay may outlive a very fast run)


STORE_WRITER = r'''
import sys
from sparse4d.jobs.backend import JobBackend
from sparse4d.jobs.store import ERROR

backend = JobBackend(sys.argv[1])
i = int(sys.argv[2])
while True:
    i += 1
    job_id = backend.create_job("train", {"results_dir": "", "train": {"num_epochs": i}}, launch=False)
    backend.store.update(job_id, lambda rec: {**rec, "name": f"job-{i}"})
    if i % 3 == 0:
        backend.store.transition(job_id, ERROR, reason="made up")
    print(i, flush=True)
'''


def check_store(root: Path) -> int:
    backend = JobBackend(root)
    ids = backend.store.list_ids()
    for entry in root.iterdir():
        if entry.is_dir() and JOB_ID_RE.fullmatch(entry.name) and (entry / "job.json").exists():
            record = json.loads((entry / "job.json").read_text())  # never torn
            assert record["status"] in STATES and record["id"] == entry.name
            assert entry.name in ids
    assert all(not name.startswith(".") and ".tmp" not in name for name in ids)
    assert len(backend.store.list()) == len(ids)  # every listed job reads back
    for pointer in (root / ".index").iterdir():
        if ".tmp" in pointer.name:
            continue
        job_id = pointer.read_text().strip()
        assert backend.store.read(job_id)["spec_digest"] == pointer.name  # the record is written before its pointer
    return len(ids)


def test_killed_job_record_writes_leave_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    rng = random.Random(505)
    start = 0
    counts = []
    for _ in range(STORE_KILLS):
        proc = subprocess.Popen([sys.executable, "-c", STORE_WRITER, str(root), str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_env())
        first = proc.stdout.readline()  # imports done, at least one job written
        assert first, proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        done = [int(line) for line in (first + rest).split()]
        start = done[-1] + 1  # the next writer goes on with new specs (the interrupted one may be half made)
        counts.append(check_store(root))
    assert counts == sorted(counts) and counts[-1] >= STORE_KILLS
    backend = JobBackend(root)
    job_id = backend.create_job("train", {"results_dir": "", "train": {"num_epochs": 10**6}}, launch=False)
    assert backend.store.read(job_id)["status"] == "Pending"
    assert backend.create_job("train", {"results_dir": "", "train": {"num_epochs": 10**6}}, launch=False) == job_id
