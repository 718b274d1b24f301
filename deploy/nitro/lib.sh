#!/usr/bin/env bash
# Helpers shared by scripts/build_nitro.sh and scripts/run_nitro.sh (sourced after
# scripts/lib.sh).  A dry run (--dry-run or DRY_RUN=1) prints every external command,
# shell-quoted and prefixed with "+ ", instead of running it; files the scripts would
# generate are printed between "# begin FILE" and "# end FILE" lines.  A dry run needs
# none of docker, nitro-cli, jq or openssl.

DRY_RUN="${DRY_RUN:-0}"
NITRO_DIR="$CMLP_ROOT/deploy/nitro"
NITRO_BUILD_DIR="${NITRO_BUILD_DIR:-$CMLP_ROOT/build/nitro}"
# HOST_BLIND=1: the host-blind layout (manifests/manifest_<n>stage_hostblind_vsock.json):
# stage 0 takes clients on vsock 5003, the last stage feeds tokens back to stage 0 through
# the host; its images are separate (the manifest is baked into them).
HOST_BLIND="${HOST_BLIND:-0}"
if [ "$HOST_BLIND" = 1 ]; then
    MANIFEST_KIND=hostblind_vsock
    IMAGE_PREFIX="${IMAGE_PREFIX:-cmlp-gpt2-hb}"
else
    MANIFEST_KIND=vsock
    IMAGE_PREFIX="${IMAGE_PREFIX:-cmlp-gpt2}"
fi
# Dry-run stand-ins for values only real tools can produce (a SHA-384 hex, enclave CIDs).
# shellcheck disable=SC2034  # used by the scripts that source this file
DRY_RUN_PCR8="$(printf 'd7%.0s' {1..48})"
# shellcheck disable=SC2034
DRY_RUN_FIRST_CID=16

is_dry() { [ "$DRY_RUN" = 1 ]; }

# parse_args "$@": --dry-run, -h/--help (the calling script's usage), then positional
# arguments into the global array ARGS.
parse_args() {
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage; exit 0 ;;
            --) shift; ARGS+=("$@"); break ;;
            -*) die "unknown option: $1 (see --help)" ;;
            *) ARGS+=("$1") ;;
        esac
        shift
    done
}

# show CMD...: the command line as a dry run prints it.
show() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
}

# run CMD...: run it, or print it in a dry run.
run() {
    if is_dry; then show "$@"; else "$@"; fi
}

# run_to FILE CMD...: run it with stdout to FILE, or print it in a dry run.
run_to() {
    local out="$1"
    shift
    if is_dry; then
        show "$@"
        printf '  > %q\n' "$out"
    else
        "$@" >"$out"
    fi
}

# emit FILE CMD...: CMD's stdout goes to FILE; in a dry run it is printed instead
# (CMD must be side-effect free: used for the generated manifests).
emit() {
    local out="$1"
    shift
    if is_dry; then
        printf '# begin %s\n' "$out"
        "$@"
        printf '# end %s\n' "$out"
    else
        "$@" >"$out"
    fi
}

# need TOOL...: outside a dry run, every tool must be on PATH.
need() {
    local tool
    is_dry && return 0
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is not installed (see docs/nitro.md)"
    done
}

# check_stages N: 1 to 3, the shipped vsock manifests.
check_stages() {
    case "$1" in
        1|2|3) ;;
        *) die "num_stages must be 1, 2 or 3 (manifests/manifest_{n}stage_vsock.json), got '$1'" ;;
    esac
}

# Names shared by the build and the run (per stage count, so 2- and 3-stage images never mix).
image_tag() { printf '%s-%sstage-s%s:latest' "$IMAGE_PREFIX" "$1" "$2"; }
eif_path() { printf '%s/%s-%sstage-s%s.eif' "$NITRO_BUILD_DIR" "$IMAGE_PREFIX" "$1" "$2"; }
measurements_path() { printf '%s/%s-%sstage-s%s.pcrs.json' "$NITRO_BUILD_DIR" "$IMAGE_PREFIX" "$1" "$2"; }
pinned_manifest_path() { printf '%s/manifest_%sstage_%s.json' "$NITRO_BUILD_DIR" "$1" "$MANIFEST_KIND"; }

nitro_manifest() { "${PYTHON:-python3}" "$NITRO_DIR/nitro_manifest.py" "$@"; }
