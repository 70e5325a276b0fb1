"""The AutoML study driver: Optuna stores the study, the job backend runs every rung of every trial.

Storage: an Optuna journal file ``<jobs_root>/automl/<study>.journal`` by default, or any Optuna RDB
URL (``sqlite:///...``, ``postgresql://...``) so controllers on several hosts share one study. The
study's configuration (base spec, algorithm, budgets) is a study user attribute, so a restarted
controller needs only the study name and storage.

Durability: a trial's progress lives in its user attributes (``run<k>`` per rung: job name, job id,
resume source, outcome, promotion decision), written before and after each step. Every rung job has a
name unique to (study, trial, rung), so a controller killed at any point and started again finds the
jobs it launched (running ones are re-attached, finished ones are read) and never runs a rung twice.
A controller only drives trials it owns (same host and jobs root); trials of other hosts sharing an
RDB study are theirs.

Algorithms: ``bayesian`` (TPE, one job per trial at the full budget), ``asha`` (random sampling,
asynchronous successive halving), ``hyperband`` (random sampling, brackets of successive halving) and
``bohb`` (TPE + Hyperband brackets). The objective is ``val_mAP`` (aliases ``mAP``,
``img_bbox_NuScenes/mAP``), maximised.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config.loading import apply_overrides, validate_mapping
from ..errors import EXIT_FAILURE, SpecError, Sparse4DError
from ..jobs.backend import JobBackend
from ..jobs.fileio import atomic_write_json
from ..jobs.store import FINISHED
from . import rungs as rung_rules
from .promotion import (
    EPOCHS_KEY,
    RESUME_KEY,
    CheckpointLoader,
    RungOutcome,
    job_name,
    launch_rung_job,
    settle_rung_job,
    torch_load_in_subprocess,
)
from .search_space import SearchSpace, UnsatisfiableCondition, build_search_space, load_schema

STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
CONFIG_ATTR, STOP_ATTR = "sparse4d_config", "stop_requested"
AUTOML_DIR = "automl"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyError(Sparse4DError):
    """The study cannot do what was asked (no finished trial yet, controller already running, ...)."""

    exit_code = EXIT_FAILURE


@dataclass
class StudyConfig:
    """Everything a controller needs to run (or continue) a study; stored in the study itself."""

    study: str
    spec: dict[str, Any]  # the user's spec file, as loaded
    overrides: dict[str, Any] = field(default_factory=dict)  # the user's -o KEY=VALUE (data sources too)
    algorithm: str = "asha"
    params: list[str] = field(default_factory=list)  # keys added to the schema's defaults
    include_defaults: bool = True
    max_trials: int = 8
    max_epochs: int = 0  # 0: the spec's train.num_epochs
    min_epochs: int = 0  # 0: derived from rungs
    rungs: int = 3
    reduction_factor: int = 3
    parallel: int = 1
    seed: int | None = None
    parent_job_id: str | None = None
    schema_path: str | None = None
    verify_load: bool = False

    @property
    def base_spec(self) -> dict[str, Any]:
        """The user's spec with their overrides applied: what every trial starts from."""
        return apply_overrides(self.spec, dict(self.overrides))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudyConfig:
        return cls(**json.loads(text))

    def resolved(self) -> StudyConfig:
        """Check the options and fill in max/min epochs; SpecError naming the option when wrong."""
        if not STUDY_NAME_RE.fullmatch(self.study):
            raise SpecError(f"study name {self.study!r} must be letters, digits, '.', '_' or '-'", key="study")
        if self.algorithm not in rung_rules.ALGORITHMS:
            raise SpecError(f"unknown algorithm {self.algorithm!r}", key="algorithm",
                            hint=f"one of {', '.join(rung_rules.ALGORITHMS)}")
        for name in ("max_trials", "parallel", "rungs"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be at least 1, got {getattr(self, name)}", key=name)
        epochs = self.max_epochs or _dig(self.base_spec, EPOCHS_KEY) or 10
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise SpecError(f"max epochs must be a whole number >= 1, got {epochs!r}", key="max_epochs")
        out = StudyConfig(**asdict(self))
        out.max_epochs = epochs
        if out.algorithm == "bayesian":
            out.min_epochs = epochs
        elif not out.min_epochs:
            out.min_epochs = rung_rules.min_epochs_for(epochs, out.reduction_factor, out.rungs)
        rung_rules.rung_epochs(out.min_epochs, out.max_epochs, out.reduction_factor)  # validates
        return out

    def space(self) -> SearchSpace:
        return build_search_space(load_schema(self.schema_path), self.params, include_defaults=self.include_defaults)

    def brackets(self) -> int:
        if self.algorithm in ("hyperband", "bohb"):
            return rung_rules.n_brackets(self.min_epochs, self.max_epochs, self.reduction_factor)
        return 1


def _dig(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ---- storage ---------------------------------------------------------------------------------

try:  # Optuna's lock interface for journal files (acquire/release); private in Optuna 4-5
    from optuna.storages.journal._file import BaseJournalFileLock as _JournalLockBase
except ImportError:  # pragma: no cover - a later Optuna moved it; the backend only calls the two methods
    _JournalLockBase = object  # type: ignore[assignment,misc]


class FlockJournalLock(_JournalLockBase):  # type: ignore[misc,valid-type]
    """Journal lock on ``flock``: the kernel drops it when its holder dies, so a controller killed
    mid-write never leaves a stale lock (Optuna's own file locks wait out a grace period instead)."""

    def __init__(self, journal: Path) -> None:
        self.path = Path(f"{journal}.flock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock



def automl_dir(jobs_root: Path) -> Path:
    folder = Path(jobs_root) / AUTOML_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_storage(storage: str | None, jobs_root: Path, study: str) -> optuna.storages.BaseStorage:
    """The journal file next to the jobs (default), a journal file path, or an RDB URL."""
    if not STUDY_NAME_RE.fullmatch(study):
        raise SpecError(f"study name {study!r} must be letters, digits, '.', '_' or '-'", key="study")
    if storage and "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad URL
            raise SpecError(f"cannot open the study storage {storage!r}: {exc}", key="storage",
                            hint="use sqlite:///path.db, postgresql://user@host/db, or a journal file path") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage) if storage else automl_dir(jobs_root) / f"{study}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=FlockJournalLock(path)))


def _sampler(config: StudyConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The algorithm's sampler. A continued study shifts the seed by its trial count, so a restarted
    controller does not replay the first configurations again."""
    seed = None if config.seed is None else config.seed + trials_so_far
    if config.algorithm in ("bayesian", "bohb"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, config.max_trials // 3)),
                                          constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def load_study(storage: optuna.storages.BaseStorage, study: str) -> tuple[optuna.Study, StudyConfig]:
    """An existing study and its stored configuration."""
    try:
        handle = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        raise StudyError(f"no AutoML study named {study!r} in this storage", key="study",
                         hint="start it with `runner automl start SPEC --study NAME`") from None
    raw = handle.user_attrs.get(CONFIG_ATTR)
    if not raw:
        raise StudyError(f"study {study!r} was not created by sparse4d AutoML (no stored configuration)", key="study")
    config = StudyConfig.from_json(raw)
    handle.sampler = _sampler(config)
    return handle, config


def create_or_load_study(storage: optuna.storages.BaseStorage, config: StudyConfig | None,
                         study: str) -> tuple[optuna.Study, StudyConfig]:
    """Create the study with `config`, or load it; a different config for an existing study is refused."""
    try:
        existing = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        handle, stored = load_study(storage, study)
        if config is not None and config.resolved().to_json() != stored.to_json():
            raise SpecError(f"study {study!r} already exists with a different spec or options", key="study",
                            hint="continue it with `runner automl start --study NAME` (no spec), or pick a new --study name")
        return handle, stored
    if config is None:
        raise StudyError(f"no AutoML study named {study!r} in this storage", key="study",
                         hint="pass the spec file to start a new study")
    config = config.resolved()
    space = config.space()
    conflicts = [k for k in space.keys if k in config.overrides]
    if conflicts:
        raise SpecError("is both fixed with -o and searched", key=conflicts[0], hint="drop one of them")
    space.check_static_conditions(config.base_spec)
    report = validate_mapping("train", config.base_spec)
    if report.errors:
        first = report.errors[0]
        raise SpecError(f"the base spec is invalid: {first.message}", key=first.key)
    handle = optuna.create_study(study_name=study, storage=storage, direction="maximize", sampler=_sampler(config))
    handle.set_user_attr(CONFIG_ATTR, config.to_json())
    return handle, config


# ---- the controller --------------------------------------------------------------------------


def _owner(backend: JobBackend) -> dict[str, str]:
    return {"host": socket.gethostname(), "jobs_root": str(backend.root.resolve())}


@contextlib.contextmanager
def controller_lock(backend: JobBackend, study: str) -> Iterator[Path]:
    """Hold ``<jobs_root>/automl/<study>.lock``: one controller per study and jobs root."""
    folder = automl_dir(backend.root)
    info = folder / f"{study}.controller.json"
    fd = os.open(folder / f"{study}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"a controller for study {study!r} is already running ({controller_info(backend, study)})",
                             key="study", hint="stop it with `runner automl stop`, or watch it with `status`") from None
        atomic_write_json(info, {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()})
        yield info
    finally:
        os.close(fd)


def controller_alive(backend: JobBackend, study: str) -> bool:
    """True while some process holds the study's controller lock under this jobs root."""
    path = automl_dir(backend.root) / f"{study}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def controller_info(backend: JobBackend, study: str) -> dict[str, Any]:
    try:
        info = json.loads((automl_dir(backend.root) / f"{study}.controller.json").read_text())
    except (OSError, ValueError):
        info = {}
    info["alive"] = controller_alive(backend, study)
    return info


class Controller:
    """Drives the trials this host owns until the trial budget is spent or a stop is requested."""

    def __init__(self, study: optuna.Study, config: StudyConfig, backend: JobBackend, *,
                 loader: CheckpointLoader | None = None, poll: float = 1.0,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.study, self.config, self.backend = study, config, backend
        self.space = config.space()
        self.base_spec = config.base_spec
        self.loader = loader if loader is not None else (torch_load_in_subprocess if config.verify_load else None)
        self.poll, self.log = poll, log
        self.owner = _owner(backend)
        self.launched: list[str] = []  # job ids this controller created (for tests and reports)
        self.reattached: list[str] = []  # jobs of a previous controller picked up again

    # -- loop --
    def run(self) -> dict[str, Any]:
        with controller_lock(self.backend, self.config.study):
            self.study.set_user_attr(STOP_ATTR, False)
            self.study.sampler = _sampler(self.config, len(self.study.get_trials(deepcopy=False)))
            self._announce_reattached()
            while True:
                if self.study.user_attrs.get(STOP_ATTR):
                    self.stop_owned("stopped by request")
                    break
                progressed = False
                for trial in self._owned_running():
                    progressed |= self.advance(trial)
                trials = self.study.get_trials(deepcopy=False)
                running = len(self._owned_running())
                while running < self.config.parallel and len(trials) < self.config.max_trials:
                    self.advance(self._new_trial())
                    running, progressed = running + 1, True
                    trials = self.study.get_trials(deepcopy=False)
                if running == 0 and len(trials) >= self.config.max_trials:
                    break
                if not progressed:
                    time.sleep(self.poll)
        return study_summary(self.study, self.config, self.backend)

    def _announce_reattached(self) -> None:
        """After a restart: say which jobs of unfinished trials are picked up again (not relaunched)."""
        for trial in self._owned_running():
            for key, run in sorted(trial.user_attrs.items()):
                if re.fullmatch(r"run\d+", key) and run.get("job_id") and "outcome" not in run:
                    self.reattached.append(run["job_id"])
                    self.log(f"trial {trial.number} rung {run['rung']}: re-attached to job {run['job_id']}")

    def _owned_running(self) -> list[FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("owner") == self.owner]

    def _new_trial(self) -> FrozenTrial:
        trial = self.study.ask()
        trial.set_user_attr("owner", self.owner)
        bracket = rung_rules.bracket_of(trial.number, self.config.algorithm, self.config.brackets())
        trial.set_user_attr("bracket", bracket)
        trial.set_user_attr("rungs", rung_rules.rung_epochs(self.config.min_epochs, self.config.max_epochs,
                                                            self.config.reduction_factor, bracket))
        return self.study._storage.get_trial(trial._trial_id)

    def _handle(self, frozen: FrozenTrial) -> optuna.trial.Trial:
        return optuna.trial.Trial(self.study, frozen._trial_id)

    # -- one step of one trial; True when something changed --
    def advance(self, frozen: FrozenTrial) -> bool:
        handle = self._handle(frozen)
        attrs = frozen.user_attrs
        if "overrides" not in attrs:
            try:
                sample = self.space.sample(handle, self.base_spec)
            except UnsatisfiableCondition as exc:
                return self._fail(frozen, f"sampling: {exc}")
            handle.set_user_attr("overrides", sample.values)
            handle.set_user_attr("skipped", sample.skipped)
            attrs = self._attrs(frozen)
        epochs_by_rung: list[int] = attrs["rungs"]
        k = max((int(key[3:]) for key in attrs if re.fullmatch(r"run\d+", key)), default=-1)
        if k < 0:
            self._plan_run(handle, attrs, 0, None)
            return True
        run = attrs[f"run{k}"]
        if not run.get("job_id"):
            self._launch(handle, attrs, k, run)
            return True
        if "outcome" not in run:
            status = self.backend.get_job_status(run["job_id"])
            if status["status"] not in FINISHED:
                return False
            outcome = settle_rung_job(
                self.backend, run["job_id"], epochs=run["epochs"],
                resume_from=Path(run["resume_from"]) if run.get("resume_from") else None,
                source_metric=run.get("source_metric"), source_job_id=run.get("source_job_id"), loader=self.loader)
            run = {**run, "outcome": outcome.to_dict()}
            if outcome.ok:
                handle.report(outcome.metric, step=run["epochs"])
                run["decision"] = self._decide(frozen, k, outcome, len(epochs_by_rung))
            handle.set_user_attr(f"run{k}", run)
            self.log(f"trial {frozen.number} rung {k} ({run['epochs']} epochs): "
                     + (f"mAP {outcome.metric:.4f} ({outcome.metric_source}) -> {run.get('decision')}"
                        if outcome.ok else f"failed: {outcome.reason}"))
        outcome = RungOutcome(**run["outcome"])
        if not outcome.ok:
            return self._fail(frozen, outcome.reason or "rung failed")
        decision = run.get("decision")
        if decision == "complete":
            self.study.tell(frozen.number, outcome.metric, skip_if_finished=True)
        elif decision == "prune":
            self.study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:  # promote
            self._plan_run(handle, attrs, k + 1, (k, run, outcome))
        return True

    def _attrs(self, frozen: FrozenTrial) -> dict[str, Any]:
        return self.study._storage.get_trial(frozen._trial_id).user_attrs

    def _decide(self, frozen: FrozenTrial, k: int, outcome: RungOutcome, n_rungs: int) -> str:
        if k == n_rungs - 1:
            return "complete"
        bracket = frozen.user_attrs.get("bracket", 0)
        competitors = []
        for other in self.study.get_trials(deepcopy=False):
            if other.user_attrs.get("bracket", 0) != bracket:
                continue
            if other.number == frozen.number:
                competitors.append(outcome.metric)
                continue
            done = (other.user_attrs.get(f"run{k}") or {}).get("outcome") or {}
            if done.get("ok") and done.get("metric") is not None:
                competitors.append(done["metric"])
        return "promote" if rung_rules.promote(outcome.metric, competitors, self.config.reduction_factor) else "prune"  # type: ignore[arg-type]

    def _plan_run(self, handle: optuna.trial.Trial, attrs: Mapping[str, Any], k: int,
                  source: tuple[int, dict[str, Any], RungOutcome] | None) -> None:
        run: dict[str, Any] = {"rung": k, "epochs": attrs["rungs"][k],
                               "job_name": job_name(self.config.study, handle.number, k), "job_id": None}
        if source is not None:
            _, source_run, outcome = source
            run.update(resume_from=outcome.checkpoint, source_job_id=source_run["job_id"],
                       source_metric=outcome.metric)
        handle.set_user_attr(f"run{k}", run)
        self._launch(handle, attrs, k, run)

    def trial_spec(self, number: int, overrides: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
        """The rung job's spec: the user's spec, the sampled values, the rung budget and resume source."""
        changes: dict[str, Any] = dict(overrides)
        changes[EPOCHS_KEY] = run["epochs"]
        changes[RESUME_KEY] = run.get("resume_from") or _dig(self.base_spec, RESUME_KEY) or ""
        folder = f"{AUTOML_DIR}/{self.config.study}/trial_{number:04d}/rung_{run['rung']}"
        for key in ("results_dir", "train.results_dir"):
            user_dir = _dig(self.base_spec, key)
            if isinstance(user_dir, str) and user_dir:  # keep the user's output dir, one sub-folder per rung job
                changes[key] = f"{user_dir.rstrip('/')}/{folder}"
        return apply_overrides(self.base_spec, changes)

    def _launch(self, handle: optuna.trial.Trial, attrs: Mapping[str, Any], k: int, run: dict[str, Any]) -> None:
        overrides = self._attrs_of(handle).get("overrides", {})
        spec = self.trial_spec(handle.number, overrides, run)
        report = validate_mapping("train", spec)
        if report.errors:
            first = report.errors[0]
            self._fail_number(handle, f"trial spec invalid at {first.key}: {first.message}")
            return
        parent = run.get("source_job_id") or self.config.parent_job_id
        job_id, created = launch_rung_job(self.backend, spec, name=run["job_name"], parent_job_id=parent)
        (self.launched if created else self.reattached).append(job_id)
        handle.set_user_attr(f"run{k}", {**run, "job_id": job_id})
        self.log(f"trial {handle.number} rung {k}: {'launched' if created else 're-attached to'} job {job_id} "
                 f"({run['epochs']} epochs{', resuming ' + run['resume_from'] if run.get('resume_from') else ''})")

    def _attrs_of(self, handle: optuna.trial.Trial) -> dict[str, Any]:
        return self.study._storage.get_trial(handle._trial_id).user_attrs

    def _fail(self, frozen: FrozenTrial, reason: str) -> bool:
        self._fail_number(self._handle(frozen), reason)
        return True

    def _fail_number(self, handle: optuna.trial.Trial, reason: str) -> None:
        handle.set_user_attr("fail_reason", reason)
        self.study.tell(handle.number, state=TrialState.FAIL, skip_if_finished=True)
        self.log(f"trial {handle.number} failed: {reason}")

    def stop_owned(self, reason: str) -> list[str]:
        """Cancel the running rung jobs of this host's trials and mark those trials failed."""
        return stop_trials(self.study, self.backend, reason, owner=self.owner)


def stop_trials(study: optuna.Study, backend: JobBackend, reason: str, *, owner: Mapping[str, str]) -> list[str]:
    canceled = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("owner") != dict(owner):
            continue
        for key, run in trial.user_attrs.items():
            if re.fullmatch(r"run\d+", key) and run.get("job_id") and "outcome" not in run:
                with contextlib.suppress(Sparse4DError):
                    backend.cancel_job(run["job_id"])
                    canceled.append(run["job_id"])
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return canceled


def request_stop(study: optuna.Study, backend: JobBackend, *, wait_s: float = 30.0) -> dict[str, Any]:
    """Ask the controller to stop; if none is alive here, cancel this host's running trials directly."""
    study.set_user_attr(STOP_ATTR, True)
    deadline = time.monotonic() + wait_s
    while controller_alive(backend, study.study_name) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = controller_alive(backend, study.study_name)
    canceled = [] if alive else stop_trials(study, backend, "stopped by request", owner=_owner(backend))
    return {"stop_requested": True, "controller_alive": alive, "canceled_jobs": canceled}


# ---- reports ---------------------------------------------------------------------------------


def _runs(trial: FrozenTrial) -> list[dict[str, Any]]:
    keys = sorted((int(k[3:]), k) for k in trial.user_attrs if re.fullmatch(r"run\d+", k))
    out = []
    for _, key in keys:
        run = trial.user_attrs[key]
        outcome = run.get("outcome") or {}
        out.append({"rung": run.get("rung"), "epochs": run.get("epochs"), "job_id": run.get("job_id"),
                    "resume_from": run.get("resume_from"), "metric": outcome.get("metric"),
                    "metric_source": outcome.get("metric_source"), "checkpoint": outcome.get("checkpoint"),
                    "ok": outcome.get("ok"), "reason": outcome.get("reason"), "decision": run.get("decision")})
    return out


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value,
            "params": trial.user_attrs.get("overrides", {}), "skipped": trial.user_attrs.get("skipped", {}),
            "bracket": trial.user_attrs.get("bracket"), "rungs": trial.user_attrs.get("rungs"),
            "runs": _runs(trial), "fail_reason": trial.user_attrs.get("fail_reason")}


def best_trial(study: optuna.Study) -> dict[str, Any]:
    """The best finished trial: its job id (parent_job_id for evaluate/export) and explicit checkpoint."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        raise StudyError(f"study {study.study_name!r} has no finished trial yet", key="study",
                         hint="wait for the study (runner automl status) and ask again")
    best = max(complete, key=lambda t: (t.value, -t.number))
    final = _runs(best)[-1]
    return {"trial": best.number, "value": best.value, "metric": "val_mAP", "job_id": final["job_id"],
            "parent_job_id": final["job_id"], "checkpoint": final["checkpoint"],
            "epoch": (best.user_attrs[f"run{len(_runs(best)) - 1}"]["outcome"] or {}).get("epoch"),
            "step": (best.user_attrs[f"run{len(_runs(best)) - 1}"]["outcome"] or {}).get("step"),
            "metric_source": final["metric_source"], "params": best.user_attrs.get("overrides", {})}


def study_summary(study: optuna.Study, config: StudyConfig, backend: JobBackend) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    try:
        best: dict[str, Any] | None = best_trial(study)
    except StudyError:
        best = None
    running = counts.get("RUNNING", 0)
    finished = len(trials) >= config.max_trials and running == 0
    return {"study": study.study_name, "algorithm": config.algorithm, "finished": finished,
            "stop_requested": bool(study.user_attrs.get(STOP_ATTR)), "max_trials": config.max_trials,
            "max_epochs": config.max_epochs, "min_epochs": config.min_epochs,
            "reduction_factor": config.reduction_factor, "parallel": config.parallel, "counts": counts,
            "trials": [trial_summary(t) for t in trials], "best": best,
            "controller": controller_info(backend, study.study_name)}
