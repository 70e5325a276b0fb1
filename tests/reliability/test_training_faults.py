"""Faults during training, on a real (tiny) `sparse4d train` subprocess.

- kill -9 at 20 seeded points (start-up, between steps, in the middle of a checkpoint write): every
  checkpoint on disk loads with weights_only=True, status.json stays line-by-line JSON, each resume
  from the newest checkpoint picks up where it says, and the last resume ends at the same final
  epoch/step as an uninterrupted run, with no temporary file left behind;
- a CUDA out-of-memory error (injected into the model's forward) in training and in inference: one
  message naming the knobs, a non-zero exit, no traceback, a FAILURE event, and the checkpoints
  written before it kept and loadable.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from sparse4d.engine.checkpoint import CHECKPOINT_PATTERN, LATEST_NAME, list_checkpoints
from sparse4d.jobs.status_file import read_events
from .tiny_training import child_env, make_converted, run_trainer, tiny_train_overrides, trainer_command, write_spec

pytestmark = pytest.mark.slow

KILLS_PER_CHAIN = 10  # two chains side by side: 20 kills
OOM_KNOBS = ("dataset.num_frames", "dataset.batch_size", "model.input_shape", "dataset.augmentation.final_dim",
             "model.head.instance_bank.num_temp_instances")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The tiny data and one uninterrupted run: its final checkpoint is what every resumed chain must reach."""
    folder = tmp_path_factory.mktemp("reliability_train")
    converted = make_converted(folder)
    results = folder / "reference"
    spec = write_spec(folder / "reference.yaml", tiny_train_overrides(converted, results))
    done = run_trainer("train", spec)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = list_checkpoints(results)
    assert len(checkpoints) == 12  # 6 steps per epoch, 2 epochs, one checkpoint per step
    yield {"folder": folder, "converted": converted, "results": results, "final": checkpoints[-1]}
    shutil.rmtree(results)  # 12 checkpoints of ~140 MB each: not worth keeping after the module


# ------------------------------------------------------------------------------------------ kill -9
@dataclass(frozen=True)
class KillPoint:
    """When to send SIGKILL: `clock` s after start, or `delay` s after the n-th checkpoint write starts/ends."""

    kind: str  # "clock" | "during_write" | "after_checkpoint"
    nth: int
    delay: float


def kill_points(seed: int, count: int) -> list[KillPoint]:
    rng = random.Random(seed)
    points = []
    for _ in range(count):
        kind = rng.choice(["clock", "during_write", "during_write", "after_checkpoint"])
        if kind == "clock":
            points.append(KillPoint(kind, 0, rng.uniform(0.5, 9.0)))
        elif kind == "during_write":
            points.append(KillPoint(kind, rng.randint(1, 2), rng.uniform(0.0, 0.05)))
        else:
            points.append(KillPoint(kind, 1, rng.uniform(0.0, 0.6)))
    return points


def _writing(results: Path) -> set[str]:
    return {p.name for p in results.glob(".model_epoch_*.tmp")}


def _finished(results: Path) -> set[str]:
    return {p.name for p in results.glob("model_epoch_*.pth")}


def wait_for_kill_point(proc: subprocess.Popen, results: Path, point: KillPoint) -> bool:
    """Block until the kill point is reached; False when the process ended on its own first."""
    started = time.monotonic()
    seen_writes: set[str] = set()
    before = _finished(results)
    while proc.poll() is None:
        if point.kind == "clock" and time.monotonic() - started >= point.delay:
            return True
        if point.kind == "during_write":
            seen_writes |= _writing(results)
            if len(seen_writes) >= point.nth:
                time.sleep(point.delay)
                return proc.poll() is None
        if point.kind == "after_checkpoint" and len(_finished(results) - before) >= point.nth:
            time.sleep(point.delay)
            return proc.poll() is None
        time.sleep(0.002)
    return False


@dataclass
class Chain:
    """One results folder trained by successive processes, each killed, each resuming from the newest checkpoint."""

    folder: Path
    converted: dict
    points: list[KillPoint]
    verified: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (size, mtime_ns) already loaded
    kills: int = 0
    mid_write_kills: int = 0
    resumes: int = 0
    completions: int = 0
    cycle: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.folder / f"cycle{self.cycle}"

    def spec(self) -> Path:
        return write_spec(self.folder / f"spec{self.cycle}.yaml", tiny_train_overrides(self.converted, self.results))

    def start(self) -> tuple[subprocess.Popen, Path | None, Path]:
        newest = list_checkpoints(self.results)[-1][2] if list_checkpoints(self.results) else None
        overrides = [f"train.resume_training_checkpoint_path={newest}"] if newest else []
        log = self.folder / f"process{self.kills + self.completions}.log"
        handle = log.open("w")
        proc = subprocess.Popen(trainer_command("train", self.spec(), *overrides), stdout=handle, stderr=subprocess.STDOUT,
                                cwd=self.folder, env=child_env())
        handle.close()
        return proc, newest, log


def check_files(chain: Chain) -> None:
    """What must hold after any kill: whole checkpoints only, old ones untouched, status.json readable."""
    results = chain.results
    names = {p.name for p in results.glob("*.pth")}
    numbered = {path.name for _, _, path in list_checkpoints(results)}
    assert names - numbered <= {LATEST_NAME}, f"unexpected .pth files {names - numbered}"
    for name in sorted(numbered):
        path = results / name
        stat = path.stat()
        if name in chain.verified:
            assert chain.verified[name] == (stat.st_size, stat.st_mtime_ns), f"{name} was rewritten"
            continue
        payload = torch.load(path, map_location="cpu", weights_only=True)
        match = CHECKPOINT_PATTERN.match(name)
        assert (payload["epoch"], payload["global_step"]) == (int(match.group(1)), int(match.group(2))), name
        assert payload["state_dict"], name
        chain.verified[name] = (stat.st_size, stat.st_mtime_ns)
    if (results / LATEST_NAME).exists():
        assert any(os.path.samefile(results / LATEST_NAME, results / n) for n in numbered), "model_latest.pth is no checkpoint"
    status = results / "status.json"
    if status.exists():
        lines = [line for line in status.read_bytes().splitlines() if line.strip()]
        for line in lines:
            json.loads(line)  # never a torn line: each event is one write() of a whole line
        events = read_events(status)
        assert len(events) == len(lines) and events[0]["status"] == "STARTED"


def check_finished(chain: Chain, reference: dict) -> None:
    """A run that ended by itself must end where the uninterrupted one did, tidily."""
    epoch, step, path = list_checkpoints(chain.results)[-1]
    assert (epoch, step, path.name) == reference["final"][:2] + (reference["final"][2].name,)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["global_step"] == reference["final"][1] and payload["batches_in_epoch"] == 0
    assert read_events(chain.results / "status.json")[-1]["status"] == "SUCCESS"
    leftovers = [p.name for p in chain.results.glob(".*tmp*")]
    assert not leftovers, f"temporaries left behind: {leftovers}"


def run_chain(chain: Chain, reference: dict) -> None:
    try:
        pending = list(chain.points)
        while True:
            proc, resumed_from, log = chain.start()
            if not pending:  # every kill done: let the last resume finish
                assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
                _check_resumed(log, resumed_from)
                check_finished(chain, reference)
                chain.completions += 1
                return
            point = pending[0]
            if wait_for_kill_point(proc, chain.results, point):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                pending.pop(0)
                chain.kills += 1
                chain.mid_write_kills += bool(_writing(chain.results))
                check_files(chain)
                if resumed_from is not None and chain.results.joinpath("status.json").exists():
                    _check_resumed(log, resumed_from, killed=True)
            else:  # it reached the end before this kill point: check it, then start a fresh folder
                assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
                check_files(chain)
                check_finished(chain, reference)
                chain.completions += 1
                chain.cycle += 1
                chain.verified.clear()
    except BaseException as exc:  # reported by the main thread
        chain.errors.append(f"{type(exc).__name__}: {exc}")


def _check_resumed(log: Path, resumed_from: Path | None, *, killed: bool = False) -> None:
    """The process said it resumed from the checkpoint it was given (when it got that far)."""
    if resumed_from is None:
        return
    text = log.read_text()
    if killed and "resuming from" not in text:
        return  # killed during start-up, before it read the checkpoint
    payload_step = int(CHECKPOINT_PATTERN.match(resumed_from.name).group(2))
    assert f"resuming from {resumed_from}" in text and f"step {payload_step})" in text, text[-2000:]


def test_kill_nine_at_twenty_points_loses_nothing(reference: dict, tmp_path: Path) -> None:
    seeds = (101, 202)
    chains = []
    for index, seed in enumerate(seeds):
        folder = tmp_path / f"chain{index}"
        folder.mkdir()
        chains.append(Chain(folder, reference["converted"], kill_points(seed, KILLS_PER_CHAIN)))
    all_points = [p for c in chains for p in c.points]
    assert len(set(all_points)) == len(all_points) == 2 * KILLS_PER_CHAIN  # 20 distinct kill points
    threads = [threading.Thread(target=run_chain, args=(chain, reference)) for chain in chains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for chain in chains:
        assert not chain.errors, chain.errors
        assert chain.kills == KILLS_PER_CHAIN and chain.completions >= 1
    assert sum(c.mid_write_kills for c in chains) >= 1, "no kill landed inside a checkpoint write"
    for chain in chains:  # passed: free the disk (a failing run keeps its folders and logs to look at)
        shutil.rmtree(chain.folder)


def test_mid_epoch_resume_keeps_later_epochs_whole(reference: dict, tmp_path: Path) -> None:
    """Regression: after resuming from a step checkpoint, every later epoch skipped the same batches again."""
    from sparse4d.config import validate_spec
    from sparse4d.engine.data_module import Sparse4DDataModule

    spec = validate_spec("train", {}, overrides=tiny_train_overrides(reference["converted"], tmp_path)).spec
    data = Sparse4DDataModule(spec.dataset, spec.model, seed=0, skip_batches=2, with_val=False)
    data.setup("fit")
    assert [len(data.train_dataloader()) for _ in range(3)] == [4, 6, 6]

    start = tmp_path / "resume" / "start.pth"
    start.parent.mkdir()
    start.write_bytes((reference["results"] / "model_epoch_000_step_00003.pth").read_bytes())
    spec_file = write_spec(tmp_path / "resume.yaml", tiny_train_overrides(
        reference["converted"], start.parent, **{"train.resume_training_checkpoint_path": str(start)}))
    done = run_trainer("train", spec_file)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for _, _, p in list_checkpoints(start.parent)] == [
        p.name for _, step, p in list_checkpoints(reference["results"]) if step > 3]


# ------------------------------------------------------------------------------------------ GPU OOM
SITECUSTOMIZE = '''
import os
import sparse4d.model.sparse4d as _m

_raise_at = int(os.environ["RELIABILITY_OOM_AT_CALL"])
_forward = _m.Sparse4D.forward
_calls = [0]


def _forward_that_runs_out(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] >= _raise_at:
        import torch
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)")
    return _forward(self, *args, **kwargs)


_m.Sparse4D.forward = _forward_that_runs_out
'''


def oom_env(folder: Path, at_call: int) -> dict[str, str]:
    hook = folder / "oom_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = child_env(RELIABILITY_OOM_AT_CALL=str(at_call))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    return env


def assert_clear_oom_message(done: subprocess.CompletedProcess[str], action: str) -> None:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, done.stderr[-3000:]
    assert f"{action} ran out of GPU memory" in error_lines[0]
    for knob in OOM_KNOBS:
        assert knob in error_lines[0], knob


def test_out_of_memory_in_training_names_the_knobs_and_keeps_checkpoints(reference: dict, tmp_path: Path) -> None:
    results = tmp_path / "oom_train"
    spec = write_spec(tmp_path / "train.yaml", tiny_train_overrides(reference["converted"], results))
    done = run_trainer("train", spec, env=oom_env(tmp_path, at_call=4))  # steps 1-3 train and save, step 4 runs out
    assert_clear_oom_message(done, "training")
    assert [path.name for _, _, path in list_checkpoints(results)] == [
        "model_epoch_000_step_00001.pth", "model_epoch_000_step_00002.pth", "model_epoch_000_step_00003.pth"]
    last = torch.load(results / "model_epoch_000_step_00003.pth", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert os.path.samefile(results / LATEST_NAME, results / "model_epoch_000_step_00003.pth")
    events = read_events(results / "status.json")
    assert events[-1]["status"] == "FAILURE" and "num_temp_instances" in events[-1]["message"]
    assert not list(results.glob(".*tmp*"))


def test_out_of_memory_in_inference_names_the_knobs(reference: dict, tmp_path: Path) -> None:
    results = tmp_path / "oom_inference"
    values = tiny_train_overrides(reference["converted"], results)
    values = {k: v for k, v in values.items() if not k.startswith("train.")}
    values["inference.checkpoint"] = str(reference["final"][2])
    spec = write_spec(tmp_path / "inference.yaml", values)
    done = run_trainer("inference", spec, env=oom_env(tmp_path, at_call=1))
    assert_clear_oom_message(done, "inference")
    events = read_events(results / "status.json")
    assert events[-1]["status"] == "FAILURE" and "dataset.batch_size" in events[-1]["message"]
    assert not list(results.glob("*.json.tmp")) and not (results / "results.json").exists()
    # the checkpoint it was given is untouched
    assert torch.load(reference["final"][2], map_location="cpu", weights_only=True)["global_step"] == reference["final"][1]
