#!/usr/bin/env bash
# Run every atheris harness in fuzz/ for SECONDS seconds each (default 30), one at a time.
# Builds the ASan + libFuzzer-instrumented extensions first (fuzz/build.sh; without clang
# the harnesses fall back to Python-level coverage).  Each harness fuzzes a working copy
# of its seed corpus in fuzz/corpus-work/ (git-ignored), so new inputs never touch
# fuzz/corpus/.  Prints executions, exec/s and findings per harness; exits 1 on any finding.
# Findings (crash-*, timeout-*, oom-* inputs and the log) land in fuzz/corpus-work/artifacts/.
# Usage: scripts/fuzz.sh [SECONDS]      (FUZZ_ARGS="..." adds libFuzzer flags)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seconds="${1:-30}"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || die "usage: scripts/fuzz.sh [SECONDS]"

ensure_env --test
fuzz_dir="$CMLP_ROOT/fuzz"
work="$fuzz_dir/corpus-work"
harnesses=(frame_decode tensor_decode handshake_resp handshake_init aead_open
           control_decode hostblind_decode manifest mock_document model_files
           snp_document az_snp_document tdx_quote)

build_rc=0
PYTHON=python "$fuzz_dir/build.sh" || build_rc=$?
case "$build_rc" in
    0) coverage="native (ASan + libFuzzer) and Python" ;;
    3) coverage="Python only (no clang)" ;;
    *) die "instrumented build failed" ;;
esac
log "coverage: $coverage; ${seconds}s per harness"

# libFuzzer's final stats line "stat::NAME: VALUE" from a log
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

read -r -a extra <<< "${FUZZ_ARGS:-}"
total_findings=0
rows=()
for h in "${harnesses[@]}"; do
    mkdir -p "$work/$h" "$work/artifacts/$h"
    cp -n "$fuzz_dir/corpus/$h/"* "$work/$h/" 2>/dev/null || true
    out="$work/artifacts/$h.log"
    rc=0
    (cd "$work" && python "$fuzz_dir/fuzz_$h.py" "$work/$h" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=16 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$h/" \
        ${extra[@]+"${extra[@]}"}) >"$out" 2>&1 || rc=$?
    found=$(find "$work/artifacts/$h" -type f | wc -l)
    [ "$rc" -ne 0 ] && [ "$found" -eq 0 ] && found=1   # died without writing an artifact
    total_findings=$((total_findings + found))
    rows+=("$(printf '%-16s %12s %10s %9s' "$h" "$(stat number_of_executed_units "$out")" \
        "$(stat average_exec_per_sec "$out")" "$found")")
    if [ "$found" -ne 0 ]; then
        log "$h: finding(s), see $out and $work/artifacts/$h/"
        grep -A 30 -m 1 -E "Uncaught Python exception|ERROR: (libFuzzer|AddressSanitizer)" \
            "$out" >&2 || tail -n 30 "$out" >&2
    fi
done

printf '%-16s %12s %10s %9s\n' harness executions "exec/s" findings
printf '%s\n' "${rows[@]}"
if [ "$total_findings" -ne 0 ]; then
    log "$total_findings finding(s)"
    exit 1
fi
log "no findings"
