#!/usr/bin/env bash
# The pipeline benchmark table: 1, 2, 3 stages, direct and relayed (bench/bench_pipeline.py).
# Usage: scripts/bench.sh [runs=5] [tokens=20]    Env: THREADS (default 2), TORCH=1 to add
# PyTorch's prefill + first token on the same weights.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_env
ensure_model
extra=()
[ "${TORCH:-0}" = 1 ] && extra+=(--torch)
python "$CMLP_ROOT/bench/bench_pipeline.py" --model-dir "$MODEL_DIR" --runs "${1:-5}" \
    --tokens "${2:-20}" --threads "${THREADS:-2}" "${extra[@]}"
