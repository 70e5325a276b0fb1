"""A small real trainer stand-in for AutoML tests: ``fake_trainer.py train -e spec.yaml``.

It behaves like the real trainer at the job boundary: reads the spec, "trains" ``train.num_epochs``
epochs, writes ``model_epoch_{e:03d}_step_{s:05d}.pth`` (zip archives, as torch.save writes) and
appends status.json events whose kpis (``val_mAP``, ``mAP``, ``img_bbox_NuScenes/mAP``) depend
deterministically on the hyperparameters, and resumes from ``train.resume_training_checkpoint_path``.

Environment knobs: FAKE_SLEEP (seconds per epoch), FAKE_LAUNCH_LOG (append one line per run),
FAKE_NO_METRIC_ON_RESUME (a resumed run reports no mAP), FAKE_BAD_CHECKPOINT (write a non-zip file).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import yaml

from sparse4d.jobs.status_file import StatusWriter, status_file_for

STEPS_PER_EPOCH = 10


def score(optim: dict) -> float:
    """Best at lr = 1e-4; weight decay matters a little."""
    lr = float(optim.get("lr", 5e-5))
    wd = float(optim.get("weight_decay", 0.01))
    return 0.5 - 0.1 * abs(math.log10(lr) - math.log10(1e-4)) - 0.01 * abs(math.log10(wd) + 2)


def write_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    if os.environ.get("FAKE_BAD_CHECKPOINT"):
        tmp.write_bytes(b"not a zip archive")
    else:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr("archive/state.json", json.dumps(state))
    os.replace(tmp, path)


def main() -> int:
    action, flag, spec_path = sys.argv[1:4]
    assert action == "train" and flag == "-e"
    spec = yaml.safe_load(Path(spec_path).read_text())
    if os.environ.get("FAKE_LAUNCH_LOG"):
        with open(os.environ["FAKE_LAUNCH_LOG"], "a") as log:
            log.write(spec_path + "\n")
    train = spec.get("train") or {}
    results = Path(spec["results_dir"])
    results.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(status_file_for(results))
    status.write("STARTED", "train started")
    start = 0
    resume = train.get("resume_training_checkpoint_path") or ""
    if resume:
        with zipfile.ZipFile(resume) as archive:
            start = json.loads(archive.read("archive/state.json"))["epoch"] + 1
        print(f"Resuming training from checkpoint {resume} at epoch {start}", flush=True)
    base = score(train.get("optim") or {})
    quiet = bool(resume) and bool(os.environ.get("FAKE_NO_METRIC_ON_RESUME"))
    for epoch in range(start, int(train.get("num_epochs", 1))):
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        step = (epoch + 1) * STEPS_PER_EPOCH
        write_checkpoint(results / f"model_epoch_{epoch:03d}_step_{step:05d}.pth", {"epoch": epoch, "step": step})
        value = round(base + 0.03 * (epoch + 1), 6)
        kpi = {} if quiet else {"val_mAP": value, "mAP": value, "img_bbox_NuScenes/mAP": value}
        status.write("RUNNING", f"epoch {epoch}", kpi=kpi)
    status.write("SUCCESS", "train finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
