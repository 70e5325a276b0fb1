#!/usr/bin/env bash
# The main job (README): install, then run the embedded default end to end through the runner:
# synthetic AICity scene -> dataset_convert -> train -> evaluate -> inference -> export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/runner demo "$@"
