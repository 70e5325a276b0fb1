"""`sparse4d train`: Lightning training of Sparse4D with TAO-compatible checkpoints and status.json.

Checkpoints: see sparse4d/engine/checkpoint.py (``model_epoch_{completed epochs:03d}_step_{steps:05d}.pth``
plus ``model_latest.pth``). Status events (``status.json`` in results_dir, or ``$SPARSE4D_STATUS_FILE``):
STARTED, one RUNNING event per epoch whose kpi holds the train losses and, after a validation,
``val_mAP`` = ``mAP`` = ``img_bbox_NuScenes/mAP``, ``NDS`` and the TP errors; SUCCESS or FAILURE.

Resume (`train.resume_training_checkpoint_path`) restores model, optimizer, scheduler, epoch, step and
RNG; epoch-boundary checkpoints resume exactly. A step checkpoint inside an epoch resumes after the
batches already trained, but the instance bank restarts empty at the resumed batch (it is not saved).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from sparse4d.engine.callbacks import LifecycleSettings, ResumeState, TrainingLifecycle, make_validator
from sparse4d.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file, spec_as_plain_dict, state_dict_of
from sparse4d.engine.data_module import Sparse4DDataModule
from sparse4d.engine.devices import is_oom, oom_error, resolve_devices
from sparse4d.engine.lightning_module import Sparse4DLightning
from sparse4d.engine.predictions import Annotations, add_first
from sparse4d.engine.pretrained import load_pretrained
from sparse4d.engine.scheduled_gc import ScheduledGarbageCollection
from sparse4d.errors import DataError, Sparse4DError
from sparse4d.jobs.fileio import remove_dead_temporaries
from sparse4d.jobs.status_file import FAILURE, STARTED, SUCCESS, StatusWriter, status_file_for

LOG = logging.getLogger(__name__)


def train_results_dir(spec: Any) -> Path:
    folder = Path(spec.train.results_dir or spec.results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_model(spec: Any) -> torch.nn.Module:
    from sparse4d.model.sparse4d import Sparse4D

    from .devices import prepare_model_for_device

    return prepare_model_for_device(Sparse4D.from_config(spec.model, len(spec.dataset.classes)))


def read_resume(path: str, classes: list[str]) -> tuple[ResumeState, dict[str, torch.Tensor]]:
    payload = load_checkpoint_file(path, what="train.resume_training_checkpoint_path")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "optimizer" not in payload:
        raise DataError(f"{path} is not a Sparse4D training checkpoint (no optimizer/scheduler state to resume)",
                        key="train.resume_training_checkpoint_path",
                        hint="resume from a model_epoch_XXX_step_YYYYY.pth written by `sparse4d train`; use train.pretrained_model_path to start from weights only")
    saved_classes = list(payload.get("classes") or [])
    if saved_classes and saved_classes != list(classes):
        raise DataError(f"{path} was trained on classes {saved_classes}, the spec lists {list(classes)}", key="dataset.classes")
    state = ResumeState(epoch=int(payload["epoch"]), global_step=int(payload["global_step"]),
                        batches_in_epoch=int(payload.get("batches_in_epoch", 0)), optimizer=payload["optimizer"],
                        lr_scheduler=payload.get("lr_scheduler"), rng=payload.get("rng"))
    return state, state_dict_of(payload, path)


def iterations_per_epoch_formula(spec: Any, world_size: int) -> float:
    d = spec.dataset
    return d.num_frames * d.num_bev_groups / (world_size * d.batch_size)


def _gather_results(results: dict) -> dict:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return results
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, results)
    merged: dict = {}
    for part in parts:
        add_first(merged, part or {})
    return merged


def run_train(spec: Any) -> dict[str, float]:
    """Train per `spec` (a validated TrainSpec); returns the last epoch's KPIs."""
    results_dir = train_results_dir(spec)
    for leftover in remove_dead_temporaries(results_dir):  # a killed run's half-written checkpoint
        LOG.info("removed %s, left by a killed run", leftover.name)
    status = StatusWriter(status_file_for(results_dir))
    status.write(STARTED, "train started")
    try:
        kpi = _train(spec, results_dir, status)
    except BaseException as exc:
        error = oom_error(exc, "training") if is_oom(exc) else exc
        message = str(error) if isinstance(error, Sparse4DError) else f"{type(exc).__name__}: {exc}"
        status.write(FAILURE, message[:2000], verbosity="ERROR")
        if error is not exc:
            raise error from exc
        raise
    status.write(SUCCESS, "train finished", kpi=kpi)
    return kpi


def _train(spec: Any, results_dir: Path, status: StatusWriter) -> dict[str, float]:
    t = spec.train
    classes = [str(c) for c in spec.dataset.classes]
    devices = resolve_devices(t.num_gpus, list(t.gpu_ids), t.num_nodes, t.precision)
    torch.backends.cudnn.benchmark = bool(t.cudnn.benchmark)
    torch.backends.cudnn.deterministic = bool(t.cudnn.deterministic)
    seed = int(t.seed)
    if seed >= 0:
        pl.seed_everything(seed, workers=True, verbose=False)
    resume, resume_weights = ResumeState(), None
    if t.resume_training_checkpoint_path:
        resume, resume_weights = read_resume(t.resume_training_checkpoint_path, classes)
        LOG.info("resuming from %s (epoch %d, step %d)", t.resume_training_checkpoint_path, resume.epoch, resume.global_step)
    if resume.epoch >= t.num_epochs:
        LOG.info("checkpoint already has %d of %d epochs: nothing to train", resume.epoch, t.num_epochs)
        return {"epoch": float(resume.epoch), "global_step": float(resume.global_step)}

    model = build_model(spec)
    if resume_weights is not None:
        model.load_state_dict(resume_weights, strict=True)
    elif t.pretrained_model_path:
        load_pretrained(model, t.pretrained_model_path, strict=True)

    holder: dict[str, pl.Trainer] = {}
    data = Sparse4DDataModule(spec.dataset, spec.model, seed=max(seed, 0),
                              epoch_of=lambda: resume.epoch + (holder["trainer"].current_epoch if "trainer" in holder else 0),
                              skip_batches=resume.batches_in_epoch)
    data.setup("fit")
    assert data.train_set is not None and data.val_set is not None
    full_epoch = len(data.train_sampler().inner) if devices.world_size == 1 else None
    steps_per_epoch = full_epoch if full_epoch is not None else int(-(-iterations_per_epoch_formula(spec, devices.world_size) // 1))
    LOG.info("iterations per epoch: %d (sampler; formula num_frames*num_bev_groups/(nodes*gpus*batch) = %.1f), %d frames, %d sequences",
             steps_per_epoch, iterations_per_epoch_formula(spec, devices.world_size), len(data.train_set), len(data.train_set.sequences))
    total_steps = steps_per_epoch * t.num_epochs
    from sparse4d.engine.compile import compile_for_training

    mark_graph_steps = compile_for_training(model, str(t.compile), on_gpu=devices.accelerator == "gpu")
    module = Sparse4DLightning(model, t.optim, total_steps, cuda_graph_steps=mark_graph_steps)

    annotations = Annotations.from_dataset(data.val_set, use_valid_flag=spec.dataset.val_dataset.use_valid_flag)
    validator = make_validator(data.val_loader, annotations, classes, tracking_threshold=spec.dataset.val_dataset.tracking_threshold,
                               gather=_gather_results)
    settings = LifecycleSettings(results_dir=results_dir, num_epochs=t.num_epochs, checkpoint_interval=t.checkpoint_interval,
                                 checkpoint_unit=t.checkpoint_interval_unit, validation_interval=t.validation_interval, seed=seed,
                                 spec=spec_as_plain_dict(spec), classes=classes, resume=resume)
    lifecycle = TrainingLifecycle(settings, status, validator)
    strategy: Any = "auto"
    if devices.distributed:
        from pytorch_lightning.strategies import DDPStrategy

        # Every parameter takes part in every step (temporal layers run masked, not skipped), so DDP
        # does not need the slower unused-parameter search.
        strategy = DDPStrategy(find_unused_parameters=False)
    trainer = pl.Trainer(
        accelerator=devices.accelerator, devices=devices.devices, num_nodes=devices.num_nodes, strategy=strategy,
        precision=devices.precision, max_epochs=t.num_epochs - resume.epoch, logger=pl.loggers.CSVLogger(str(results_dir), name="logs"),
        callbacks=[lifecycle, ScheduledGarbageCollection()], enable_checkpointing=False, enable_progress_bar=sys.stderr.isatty(), num_sanity_val_steps=0,
        limit_val_batches=0, sync_batchnorm=devices.distributed, deterministic=False, enable_model_summary=False,
        log_every_n_steps=1, use_distributed_sampler=False,
        # a mid-epoch resume shortens only its first epoch's loader: build it again for the next epochs
        reload_dataloaders_every_n_epochs=1 if resume.batches_in_epoch else 0,
    )
    holder["trainer"] = trainer
    started = time.monotonic()
    trainer.fit(module, datamodule=data)
    LOG.info("training took %.1f s; checkpoints: %s", time.monotonic() - started, [p.name for p in lifecycle.saved])
    return lifecycle.last_kpi
