#!/usr/bin/env bash
# Run one pipeline stage inside an AMD SEV-SNP, Azure SEV-SNP or Intel TDX confidential VM
# (docs/confidential-vms.md).  Stages talk over TCP: the manifest's endpoints are the VMs'
# addresses.
#
# Usage: scripts/run_cvm_stage.sh [--dry-run] KIND MANIFEST STAGE_IDX [cmlp-stage options...]
#
#   KIND is sev-snp, az-sev-snp or tdx.  The script
#   1. checks that the guest interface of KIND exists (/dev/sev-guest, the vTPM
#      /dev/tpmrm0, or the configfs-tsm report directory);
#   2. runs cmlp-stage --attestation KIND --profile production --persistent
#      --host-unattested: the stage attests itself with the hardware, verifies its
#      neighbours (same KIND, pinned by the manifest's expected_measurements) with the
#      production policy, and accepts an orchestrator without a TEE.
#
# For tdx, neighbours are verified with Intel PCS collateral: TDX_COLLATERAL (a directory,
# see scripts/fetch_tdx_collateral.sh) is passed as --tdx-collateral.
# --dry-run (or DRY_RUN=1): print the command instead of running it; no device needed.
# Env: MODEL_DIR (default model/), TDX_COLLATERAL, STAGE_ARGS (extra flags, split on spaces).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../deploy/cvm/lib.sh
. "$CMLP_ROOT/deploy/cvm/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

parse_args "$@"
[ "${#ARGS[@]}" -ge 3 ] || { usage >&2; die "KIND, MANIFEST and STAGE_IDX are required"; }
kind="${ARGS[0]}"
manifest="${ARGS[1]}"
idx="${ARGS[2]}"
extra=("${ARGS[@]:3}")
check_kind "$kind"
[[ "$idx" =~ ^[0-9]+$ ]] || die "STAGE_IDX must be a number, got '$idx'"
is_dry || [ -f "$manifest" ] || die "manifest $manifest not found"
check_device "$kind"

cmd=(cmlp-stage --manifest "$manifest" --stage-idx "$idx" --model-dir "$MODEL_DIR"
     --attestation "$kind" --profile production --persistent --host-unattested)
if [ "$kind" = tdx ]; then
    [ -n "${TDX_COLLATERAL:-}" ] || die "TDX_COLLATERAL must name a PCS collateral directory (scripts/fetch_tdx_collateral.sh)"
    is_dry || [ -d "$TDX_COLLATERAL" ] || die "TDX_COLLATERAL $TDX_COLLATERAL is not a directory"
    cmd+=(--tdx-collateral "$TDX_COLLATERAL")
fi
read -r -a stage_args <<< "${STAGE_ARGS:-}"
cmd+=("${stage_args[@]}" "${extra[@]}")
log "stage $idx of $manifest in a $kind confidential VM"
if is_dry; then show "${cmd[@]}"; else exec "${cmd[@]}"; fi
