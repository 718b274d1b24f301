#!/usr/bin/env bash
# The pipeline benchmark table: 1, 2, 3 stages, direct and relayed (bench/bench_pipeline.py).
# Usage: scripts/bench.sh [runs=5] [tokens=20]    Env: THREADS (default 2), TORCH=1 to add
# PyTorch's prefill + first token on the same weights, BASE_PORT (default 9000).
# Every configuration first runs one warm-up round (round 0: first connections, page faults,
# cold caches) that is not counted; the table holds medians of rounds 1..runs.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_env
ensure_model
extra=()
[ "${TORCH:-0}" = 1 ] && extra+=(--torch)
log "CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores;" \
    "${1:-5} measured rounds after one warm-up round (round 0, not counted)"
python "$CMLP_ROOT/bench/bench_pipeline.py" --model-dir "$MODEL_DIR" --runs "${1:-5}" \
    --tokens "${2:-20}" --threads "${THREADS:-2}" --base-port "${BASE_PORT:-9000}" "${extra[@]}"
