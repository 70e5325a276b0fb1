"""AutoML's best trial vs the default spec, with the same per-trial epoch budget, on synthetic AICity data.

Runs the real trainer (``python -m sparse4d.cli.trainer train``) through the job backend: one train job
with the default hyperparameters, then an AutoML study (ASHA by default) whose fully trained trials get
the same number of epochs. Prints both val_mAP values, the best trial's parameters, and the epochs and
wall time each side spent. Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/automl_vs_default.py --epochs 4 --trials 4 [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse4d.automl.study import Controller, StudyConfig, best_trial, create_or_load_study, open_storage  # noqa: E402
from sparse4d.config.loading import apply_overrides  # noqa: E402
from sparse4d.jobs.backend import JobBackend  # noqa: E402

NUM_ANCHOR = 16


def synthetic_train_spec(workdir: Path, epochs: int, *, frames: int = 8, seed: int = 3) -> dict[str, Any]:
    """Make and convert a tiny synthetic scene; return a nested train spec for the small model."""
    from sparse4d.config.convert import AICityConfig
    from sparse4d.data.convert import run_dataset_convert
    from sparse4d.data.synth import make_synthetic_dataset
    from sparse4d.engine.small_config import small_overrides

    root = make_synthetic_dataset(workdir / "aicity", scenes=1, cameras=2, frames=frames, size=(128, 64), seed=seed,
                                  splits=("train", "val"))
    converted = workdir / "converted"
    files = {}
    for split in ("train", "val"):
        config = AICityConfig.model_validate({"root": str(root), "split": split,
                                              "anchor_init_config": {"num_anchor": NUM_ANCHOR}})
        files[split] = run_dataset_convert(config, converted).annotation_files[0]
    values: dict[str, Any] = small_overrides(width=128, height=64, cameras=2, num_anchor=NUM_ANCHOR)
    values.update({
        "model.head.instance_bank.anchor": str(converted / "anchor_init.npy"),
        "dataset.data_root": str(root / "train"),
        "dataset.train_dataset.ann_file": str(files["train"]),
        "dataset.val_dataset.ann_file": str(files["val"]),
        "dataset.test_dataset.ann_file": str(files["val"]),
        "dataset.sequences.split_num": 4,
        "dataset.train_dataset.sequences_split_num": 4,
        "train.num_epochs": epochs, "train.checkpoint_interval": 1, "train.validation_interval": 1,
        "train.optim.lr_scheduler.warmup_iters": 3,
    })
    return apply_overrides({}, values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=4, help="Epochs of the default run and of a full trial.")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--algorithm", default="asha")
    parser.add_argument("--rungs", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="automl_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = synthetic_train_spec(workdir, args.epochs)
    backend = JobBackend(workdir / "jobs")

    started = time.monotonic()
    default_job = backend.create_job("train", spec, name="default-spec", force=True)
    default = backend.wait(default_job, poll=1.0)
    default_s = time.monotonic() - started
    if default["status"] != "Done":
        print(backend.get_job_logs(default_job, tail=40), file=sys.stderr)
        print(f"default run failed: {default.get('reason')}", file=sys.stderr)
        return 1

    started = time.monotonic()
    config = StudyConfig(study="bench", spec=spec, algorithm=args.algorithm, max_trials=args.trials,
                         max_epochs=args.epochs, rungs=args.rungs, reduction_factor=args.reduction_factor,
                         parallel=args.parallel, seed=args.seed, verify_load=True)
    study, config = create_or_load_study(open_storage(None, backend.root, "bench"), config, "bench")
    summary = Controller(study, config, backend, poll=1.0, log=lambda m: print(m, file=sys.stderr)).run()
    automl_s = time.monotonic() - started
    trained_epochs = 0
    for trial in summary["trials"]:
        previous = 0
        for run in trial["runs"]:
            trained_epochs += run["epochs"] - previous  # a promotion resumes: only the new epochs are trained
            previous = run["epochs"]
    best = best_trial(study) if summary["best"] else None
    result = {
        "epochs_per_full_trial": args.epochs,
        "default": {"val_mAP": default["metric"], "job_id": default_job, "epochs": args.epochs, "wall_s": round(default_s, 1)},
        "automl": {"algorithm": args.algorithm, "trials": len(summary["trials"]), "counts": summary["counts"],
                   "best_val_mAP": best["value"] if best else None, "best_job_id": best["job_id"] if best else None,
                   "best_params": best["params"] if best else None, "trained_epochs": trained_epochs,
                   "wall_s": round(automl_s, 1)},
    }
    print(json.dumps(result, indent=2))
    if best:
        delta = best["value"] - (default["metric"] or 0.0)
        print(f"default val_mAP {default['metric']:.4f} | AutoML best val_mAP {best['value']:.4f} "
              f"(delta {delta:+.4f}) | trained epochs {trained_epochs} vs {args.epochs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
