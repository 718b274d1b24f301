#!/usr/bin/env bash
# Fetch Intel PCS collateral for verifying TDX quotes offline (docs/confidential-vms.md):
# the TCB Info of one FMSPC, the TDX QE Identity, the PCK CRLs (platform and processor CA),
# the Intel SGX Root CA CRL, and their issuer chains.  cmlp reads the directory as is
# (cmlp.attestation.tdx.collateral.load_collateral_dir); every signature is checked
# against the pinned Intel SGX Root CA at verification time, so nothing here is trusted.
#
# Usage: scripts/fetch_tdx_collateral.sh [--dry-run] FMSPC OUTDIR
#
#   FMSPC is 12 hex digits (cmlp attest verify prints it as "fmspc:" for a quote, or
#   take it from the PCK certificate).  Collateral lives 30 days: fetch it again before
#   its nextUpdate (a stale set rejects every quote with TDX_COLLATERAL_STALE).
# Env: PCS_URL (default https://api.trustedservices.intel.com), ROOT_CRL_URL.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../deploy/cvm/lib.sh
. "$CMLP_ROOT/deploy/cvm/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

parse_args "$@"
[ "${#ARGS[@]}" -eq 2 ] || { usage >&2; die "FMSPC and OUTDIR are required"; }
fmspc="${ARGS[0]}"
out="${ARGS[1]}"
[[ "$fmspc" =~ ^[0-9a-fA-F]{12}$ ]] || die "FMSPC must be 12 hex digits, got '$fmspc'"
pcs="${PCS_URL:-https://api.trustedservices.intel.com}"
root_crl="${ROOT_CRL_URL:-https://certificates.trustedservices.intel.com/IntelSGXRootCA.der}"
is_dry || command -v curl >/dev/null || die "curl is not installed"

# fetch NAME URL HEADER: body to OUTDIR/NAME, the issuer-chain header to OUTDIR/NAME.chain
fetch() {
    local name="$1" url="$2" header="$3"
    run curl -fsS --proto '=https' -D "$out/$name.headers" -o "$out/$name" "$url"
    if ! is_dry; then
        sed -n "s/^$header: *//Ip" "$out/$name.headers" | tr -d '\r' >"$out/$name.chain"
        [ -s "$out/$name.chain" ] || die "$url: no $header header"
        rm -f "$out/$name.headers"
    fi
}

run mkdir -p "$out"
fetch tcb_info.json "$pcs/tdx/certification/v4/tcb?fmspc=$fmspc" TCB-Info-Issuer-Chain
fetch qe_identity.json "$pcs/tdx/certification/v4/qe/identity" SGX-Enclave-Identity-Issuer-Chain
# PCKs are issued by the Platform CA or the Processor CA: fetch both CRLs (cmlp uses the
# one whose issuer is the quote's PCK issuer).
fetch pck_crl_platform.der "$pcs/sgx/certification/v4/pckcrl?ca=platform&encoding=der" SGX-PCK-CRL-Issuer-Chain
fetch pck_crl_processor.der "$pcs/sgx/certification/v4/pckcrl?ca=processor&encoding=der" SGX-PCK-CRL-Issuer-Chain
run curl -fsS --proto '=https' -o "$out/root_ca_crl.der" "$root_crl"
log "collateral for FMSPC $fmspc in $out"
