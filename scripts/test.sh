#!/usr/bin/env bash
# Run the test suite: installs what is missing (system packages, venv, test tools, CPU PyTorch
# for the live transformers parity tests), then pytest.  Extra arguments go to pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_env --test
cd "$CMLP_ROOT"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-2}"
exec python -m pytest -q "$@"
