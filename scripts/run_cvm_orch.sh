#!/usr/bin/env bash
# Drive a pipeline whose stages run in confidential VMs (scripts/run_cvm_stage.sh), from a
# host without a TEE (docs/confidential-vms.md).
#
# Usage: scripts/run_cvm_orch.sh [--dry-run] KIND MANIFEST [text] [max_tokens]
#
#   runs cmlp-orch --attestation KIND --host-attestation none --profile production: every
#   stage's evidence is verified (built-in AMD / Intel roots, production policy) and must
#   match the manifest's expected_measurements (SEV-SNP: 0 = MEASUREMENT; TDX: 0 = MRTD,
#   1..4 = RTMR0..3); the host presents no document, so the stages must run with
#   --host-unattested (run_cvm_stage.sh does).
#
# --dry-run (or DRY_RUN=1): print the command instead of running it.
# Env: TDX_COLLATERAL (tdx: PCS collateral directory), ORCH_ARGS (extra cmlp-orch flags).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../deploy/cvm/lib.sh
. "$CMLP_ROOT/deploy/cvm/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

parse_args "$@"
[ "${#ARGS[@]}" -ge 2 ] && [ "${#ARGS[@]}" -le 4 ] || { usage >&2; die "KIND and MANIFEST are required"; }
kind="${ARGS[0]}"
manifest="${ARGS[1]}"
text="${ARGS[2]:-The capital of France is}"
max_tokens="${ARGS[3]:-20}"
check_kind "$kind"
[[ "$max_tokens" =~ ^[1-9][0-9]*$ ]] || die "max_tokens must be a positive integer"
is_dry || [ -f "$manifest" ] || die "manifest $manifest not found"
if ! is_dry; then
    python3 - "$manifest" <<'PY' || die "the manifest must pin every stage (expected_measurements) for the production profile"
import json, sys
stages = json.load(open(sys.argv[1]))["stages"]
sys.exit(0 if all(s.get("expected_measurements") for s in stages) else 1)
PY
fi
cmd=(cmlp-orch --manifest "$manifest" --text "$text" --max-tokens "$max_tokens"
     --attestation "$kind" --host-attestation none --profile production)
if [ "$kind" = tdx ]; then
    [ -n "${TDX_COLLATERAL:-}" ] || die "TDX_COLLATERAL must name a PCS collateral directory (scripts/fetch_tdx_collateral.sh)"
    cmd+=(--tdx-collateral "$TDX_COLLATERAL")
fi
read -r -a orch_args <<< "${ORCH_ARGS:-}"
cmd+=("${orch_args[@]}")
if is_dry; then show "${cmd[@]}"; else exec "${cmd[@]}"; fi
