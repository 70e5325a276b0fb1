"""Wall time of `runner validate spec` (target <= 0.5 s on a 2-core machine) and proof torch stays unloaded.

Usage: python benchmarks/validate_speed.py [--runs N]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from sparse4d.cli.runner import cli
try:
    cli(["validate", "spec", "train", sys.argv[1], "--json"], standalone_mode=False)
except SystemExit:
    pass
print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_NOT_LOADED", file=sys.stderr)
"""


def _valid_train_spec(tmp: Path) -> Path:
    """A train spec whose files all exist, so every check (incl. the model's) runs."""
    import numpy as np
    import yaml

    spec = yaml.safe_load((ROOT / "references" / "spec_template_train.yaml").read_text())
    (tmp / "root").mkdir()
    np.save(tmp / "anchor_init.npy", np.zeros((900, 11), dtype=np.float32))
    for split in ("train", "val", "test"):
        ann = tmp / f"s_infos_{split}.pkl"
        ann.write_bytes(b"")
        spec["dataset"][f"{split}_dataset"]["ann_file"] = str(ann)
    spec["dataset"]["data_root"] = str(tmp / "root")
    spec["model"]["head"]["instance_bank"]["anchor"] = str(tmp / "anchor_init.npy")
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    runner = shutil.which("runner") or str(Path(sys.executable).with_name("runner"))
    with tempfile.TemporaryDirectory() as tmp:
        spec = _valid_train_spec(Path(tmp))
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([runner, "validate", "spec", "train", str(spec), "--json"], capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        probe = subprocess.run([sys.executable, "-c", PROBE, str(spec)], capture_output=True, text=True, check=False)
    torch_state = "TORCH_LOADED" if "TORCH_LOADED" in probe.stderr else "not imported"
    print(f"runner validate spec train: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s over {args.runs} runs")
    print(f"torch on the validate path: {torch_state}")
    sys.exit(1 if torch_state == "TORCH_LOADED" else 0)


if __name__ == "__main__":
    main()
