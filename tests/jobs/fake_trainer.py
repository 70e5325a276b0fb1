"""A stand-in trainer for backend tests: `fake_trainer.py ACTION -e SPEC` driven by the spec's `fake` section.

It does what the real trainer does at the job boundary: reads spec.yaml, writes checkpoints into
results_dir, appends TAO status events to $SPARSE4D_STATUS_FILE, prints to stdout, and exits with a code.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from sparse4d.jobs.status_file import StatusWriter, status_file_for


def main() -> int:
    action, flag, spec_path = sys.argv[1:4]
    assert flag == "-e"
    spec = yaml.safe_load(Path(spec_path).read_text())
    fake = spec.get("fake", {})
    if fake.get("ignore_term"):  # a stubborn trainer: only SIGKILL stops it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    results = Path(spec["results_dir"])
    results.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(status_file_for(results))
    status.write("STARTED", f"{action} started")
    print(f"action={action} spec={spec_path}", flush=True)
    key = os.environ.get("SPARSE4D_ENCRYPTION_KEY", "")
    (results / "got_key.txt").write_text(hashlib.sha256(key.encode()).hexdigest())  # proof without the key
    if fake.get("leak"):  # a careless trainer printing its secrets
        print(f"my key is {key} and wandb {os.environ.get('WANDB_API_KEY', '')}", flush=True)
    for epoch in range(int(fake.get("epochs", 1))):
        time.sleep(float(fake.get("sleep", 0.0)))
        (results / f"model_epoch_{epoch:03d}_step_{(epoch + 1) * 10:05d}.pth").write_bytes(b"ckpt")
        status.write("RUNNING", f"epoch {epoch}", kpi={"val_mAP": 0.1 * (epoch + 1)})
    if fake.get("fail_status"):
        status.write("FAILURE", "diverged: loss is NaN", verbosity="ERROR")
    else:
        status.write("SUCCESS", f"{action} finished")
    return int(fake.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
