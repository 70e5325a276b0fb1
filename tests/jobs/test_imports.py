"""The job layer is part of the skill layer: importing it must not pull in torch (or boto3 eagerly)."""
from __future__ import annotations

import subprocess
import sys


def test_jobs_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import sparse4d.jobs, sparse4d.jobs.cli, sparse4d.jobs.storage, sparse4d.jobs.supervise\n"
        "import sparse4d.jobs.status_file, sparse4d.jobs.secrets\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'boto3' not in sys.modules, 'boto3 imported at module level'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
