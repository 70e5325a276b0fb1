"""Load: 50 concurrent `runner validate spec` / `runner plan` processes all answer correctly."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _call(args: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "sparse4d.cli.runner", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_fifty_concurrent_validate_and_plan_calls(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_epochs: -1\n")
    calls = []
    for i in range(50):
        if i % 2:
            calls.append(["validate", "spec", "train", str(bad), "--json"])
        else:
            calls.append(["plan", "train", "--request", "train Sparse4D, no HPO", "--json"])
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(_call, calls))
    for args, (code, out, err) in zip(calls, results):
        doc = json.loads(out)
        assert "Traceback" not in err
        if args[0] == "validate":
            assert code == 3 and doc["errors"][0]["key"] == "train.num_epochs"
        else:
            assert code == 0, err
            assert doc["status"] == "needs_dataset_convert" and doc["policy"]["policy"] == "off"
