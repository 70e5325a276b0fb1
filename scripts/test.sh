#!/usr/bin/env bash
# The test command (README): install what is needed, check generated files for drift, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/runner generate --check
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
