#!/usr/bin/env bash
# A 2-stage encrypted GPT-2 pipeline on localhost (TCP, mock attestation).
# Usage: scripts/run_local.sh [text="The capital of France is"] [max_tokens=20]
# Env: MODEL_DIR (default: model/, created with the synthetic default when empty),
#      MANIFEST (default: manifests/manifest_2stage.json), THREADS (BLAS threads per stage).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

text="${1:-The capital of France is}"
max_tokens="${2:-20}"
manifest="${MANIFEST:-$MANIFESTS/manifest_2stage.json}"

ensure_env
ensure_model
trap stop_stages EXIT
n=$(python -c 'import sys; from cmlp.manifest import Manifest; print(Manifest.load(sys.argv[1]).num_stages)' "$manifest")
for ((i = 0; i < n; i++)); do
    start_stage "$manifest" "$i" ${THREADS:+--threads "$THREADS"}
done
wait_for_stages "$manifest"
# ORCH_ARGS: extra orchestrator flags, split on spaces (e.g. "--latency-out /tmp/l.json")
read -r -a orch_args <<<"${ORCH_ARGS:-}"
cmlp-orch --manifest "$manifest" --text "$text" --max-tokens "$max_tokens" "${orch_args[@]}"
