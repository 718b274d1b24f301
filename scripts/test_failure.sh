#!/usr/bin/env bash
# Kill -9 a stage in the middle of generation.  PASS only if the orchestrator exits
# non-zero within 10 s of the kill and names the failed stage or channel; a hang (the
# watchdog kill) is FAIL, unlike the reference's script.
# Usage: scripts/test_failure.sh [stage_to_kill=1]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

victim="${1:-1}"
manifest="${MANIFEST:-$MANIFESTS/manifest_2stage.json}"
ensure_env
ensure_model
trap stop_stages EXIT
start_stage "$manifest" 0
start_stage "$manifest" 1
wait_for_stages "$manifest"
out=$(mktemp)
err_log=$(mktemp)
cmlp-orch --manifest "$manifest" --text "The capital of France is" --max-tokens 500 \
    >"$out" 2>"$err_log" &
orch=$!
sleep 3
kill -9 "${STAGE_PIDS[$victim]}"
killed_at=$(date +%s.%N)
for _ in $(seq 1 100); do
    kill -0 "$orch" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$orch" 2>/dev/null; then
    kill -9 "$orch"
    echo "FAIL [failure-detection]: orchestrator still running 10 s after stage $victim was killed (hung)"
    exit 1
fi
set +e
wait "$orch"
rc=$?
set -e
elapsed=$(python -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$killed_at")
err=$(grep -E "error" "$err_log" | tail -n 1 || true)
if [ "$rc" -ne 0 ] && grep -qE "stage $victim|channel" <<<"$err"; then
    echo "PASS [failure-detection]: exit $rc after ${elapsed}s: $err"
    exit 0
fi
echo "FAIL [failure-detection]: exit $rc after ${elapsed}s, message: ${err:-<none>}"
exit 1
