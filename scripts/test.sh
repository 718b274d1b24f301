#!/usr/bin/env bash
# Run the test suite: installs what is missing (system packages, venv, test tools, CPU PyTorch
# for the live transformers parity tests), then pytest: the fast tier, then the slow tier
# (wheel, sustained load, torch parity, fuzz runs).  With arguments, exactly
# `pytest ARGS` (pytest's default is the fast tier; `-m slow` the slow one).
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_env --test
cd "$CMLP_ROOT"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-2}"
if [ "$#" -gt 0 ]; then
    exec python -m pytest -q "$@"
fi
log "fast tier"
python -m pytest -q
log "slow tier"
exec python -m pytest -q -m slow
