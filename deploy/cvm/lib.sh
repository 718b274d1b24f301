#!/usr/bin/env bash
# Helpers shared by scripts/run_cvm_stage.sh, scripts/run_cvm_orch.sh and
# scripts/fetch_tdx_collateral.sh (sourced after scripts/lib.sh).  A dry run (--dry-run
# or DRY_RUN=1) prints every external command, shell-quoted and prefixed with "+ ",
# instead of running it, and skips the device checks.

DRY_RUN="${DRY_RUN:-0}"
CVM_KINDS="sev-snp az-sev-snp tdx"
# Where each kind's provider reaches the hardware (cmlp/attestation/*/provider.py).
SEV_GUEST_DEVICE="${SEV_GUEST_DEVICE:-/dev/sev-guest}"
TPM_DEVICE="${TPM_DEVICE:-/dev/tpmrm0}"
TSM_REPORT_DIR="${TSM_REPORT_DIR:-/sys/kernel/config/tsm/report}"

is_dry() { [ "$DRY_RUN" = 1 ]; }

# parse_args "$@": --dry-run, -h/--help, then the rest into ARGS (options after the
# positional ones are passed through, e.g. to cmlp-stage).
parse_args() {
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage; exit 0 ;;
            --) shift; ARGS+=("$@"); break ;;
            *) ARGS+=("$1") ;;
        esac
        shift
    done
}

show() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
}

run() {
    if is_dry; then show "$@"; else "$@"; fi
}

check_kind() {
    case " $CVM_KINDS " in
        *" $1 "*) ;;
        *) die "attestation kind must be one of: $CVM_KINDS (got '$1')" ;;
    esac
}

# check_device KIND: the guest interface the provider needs is present.
check_device() {
    is_dry && return 0
    case "$1" in
        sev-snp)
            [ -c "$SEV_GUEST_DEVICE" ] || die "$SEV_GUEST_DEVICE not found: not an SEV-SNP guest, or the sev-guest module is not loaded (modprobe sev-guest)" ;;
        az-sev-snp)
            [ -c "$TPM_DEVICE" ] || die "$TPM_DEVICE not found: not an Azure confidential VM with a vTPM" ;;
        tdx)
            [ -d "$TSM_REPORT_DIR" ] || die "$TSM_REPORT_DIR not found: needs Linux >= 6.7 in a TDX guest with configfs mounted (mount -t configfs none /sys/kernel/config)" ;;
    esac
}
