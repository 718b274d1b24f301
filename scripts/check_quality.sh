#!/usr/bin/env bash
# Output checks of the reference (pipeline.md 6.1), each on freshly started stages.
#   geography     "The capital of France is", 5 tokens: the *continuation* must mention Paris
#                 (real weights only; the reference grepped the prompt itself).
#   continuation  "Once upon a time", 10 tokens: non-empty continuation.
#   determinism   "The meaning of life is", 5 tokens twice: byte-identical.
# On the synthetic default model the text is noise: the checks that need real weights
# say so and are skipped.  Exit 1 if any check fails.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

manifest="${MANIFEST:-$MANIFESTS/manifest_2stage.json}"
ensure_env
ensure_model
synthetic=$(python -c 'import json,sys; print(int(bool(json.load(open(sys.argv[1])).get("cmlp_synthetic"))))' "$MODEL_DIR/config.json")
pass=0
fail=0
skip=0

generate() {   # generate TEXT TOKENS -> stdout of the orchestrator (prompt + continuation)
    trap stop_stages RETURN
    local n i
    n=$(python -c 'import sys; from cmlp.manifest import Manifest; print(Manifest.load(sys.argv[1]).num_stages)' "$manifest")
    for ((i = 0; i < n; i++)); do start_stage "$manifest" "$i"; done
    wait_for_stages "$manifest"
    cmlp-orch --manifest "$manifest" --text "$1" --max-tokens "$2" 2>/dev/null
}

check() {      # check NAME OK MESSAGE
    if [ "$2" = 1 ]; then
        echo "PASS [$1]: $3"; pass=$((pass + 1))
    else
        echo "FAIL [$1]: $3"; fail=$((fail + 1))
    fi
}

prompt="The capital of France is"
if out=$(generate "$prompt" 5); then
    cont="${out#"$prompt"}"
    if [ "$synthetic" = 1 ]; then
        echo "SKIP [geography]: needs real GPT-2 weights (scripts/download_model.sh); got \"$out\""
        skip=$((skip + 1))
    elif grep -qi "paris\|french" <<<"$cont"; then
        check geography 1 "\"$out\""
    else
        check geography 0 "continuation does not mention Paris/French: \"$cont\""
    fi
else
    check geography 0 "pipeline error"
fi

prompt="Once upon a time"
if out=$(generate "$prompt" 10); then
    cont="${out#"$prompt"}"
    [ -n "${cont//[[:space:]]/}" ] && ok=1 || ok=0
    check continuation "$ok" "\"$out\""
else
    check continuation 0 "pipeline error"
fi

prompt="The meaning of life is"
if a=$(generate "$prompt" 5) && b=$(generate "$prompt" 5); then
    [ -n "$a" ] && [ "$a" = "$b" ] && ok=1 || ok=0
    check determinism "$ok" "\"$a\" vs \"$b\""
else
    check determinism 0 "pipeline error"
fi

echo "=== Results: $pass passed, $fail failed, $skip skipped ==="
[ "$fail" -eq 0 ]
