#!/usr/bin/env bash
# Create .venv (if needed) and install the package with the trainer and test extras.
# torch is pinned to 2.13.0 here (the CPU wheel CI uses); pyproject itself only asks for torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[trainer,dev]"
