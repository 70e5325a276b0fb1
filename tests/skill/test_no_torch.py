"""The skill layer imports and plans with torch made unimportable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
import sparse4d.skill.cli, sparse4d.skill.render, sparse4d.skill.plan  # noqa: E401
from pathlib import Path
from sparse4d.skill.render import render_generated_files
from sparse4d.skill.policy import resolve_automl_policy
render_generated_files(Path(sys.argv[1]))
print(resolve_automl_policy("train Sparse4D, no HPO", skill_dir=sys.argv[1]).route)
assert "torch" not in sys.modules
"""


def test_skill_layer_needs_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "direct"
