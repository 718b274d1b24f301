#!/usr/bin/env bash
# Run the GPT-2 pipeline in AWS Nitro Enclaves: one enclave per stage, the orchestrator on
# the parent instance (docs/nitro.md).  Build the images first: scripts/build_nitro.sh N.
#
# Usage: scripts/run_nitro.sh [--dry-run] [text="The capital of France is"] [max_tokens=20]
#                             [num_stages=2]
#
#   1. launches the stage EIFs with nitro-cli (ENCLAVE_MEMORY_MIB and ENCLAVE_CPUS each),
#      named <ENCLAVE_NAME_PREFIX><i>, and reads each one's ID and CID with jq from
#      `nitro-cli describe-enclaves`;
#   2. writes the host's manifest: the one baked into the images, with the real CIDs, after
#      checking that every EIF's measured PCR8 is the one that manifest pins;
#   3. waits STARTUP_WAIT seconds for the stages to load the model, then runs
#      cmlp-orch --attestation nitro --host-attestation none: it verifies every stage's
#      NSM document (pinned by the manifest), presents none itself, and relays the
#      ciphertext between the enclaves (vsock ports 6001, 6002; final output 5002);
#   4. terminates the enclaves it launched when it exits (success, failure or Ctrl-C).
#
# HOST_BLIND=1 (images from HOST_BLIND=1 scripts/build_nitro.sh): step 3 becomes host-blind
# mode: `cmlp serve --attestation nitro --host-attestation none --listen $LISTEN` sets the
# stages up and forwards each client's TCP connection, as ciphertext, to stage 0's vsock
# port 5003 (the feedback link last stage -> stage 0 is relayed on vsock 600<n>); then
# `cmlp generate --profile production` (the user's side; here on the parent for the demo)
# verifies stage 0's NSM document against the host manifest's pins and generates; the
# host sees neither the prompt nor the tokens.  SERVE_ONLY=1 keeps serving until Ctrl-C
# instead.  Clients elsewhere need the host manifest (its path is logged) and LISTEN.
#
# --dry-run (or DRY_RUN=1): print every command instead of running it (enclave CIDs 16,
# 17...); needs no nitro-cli, jq or cmlp-orch, and writes nothing.
# Env: NITRO_BUILD_DIR, IMAGE_PREFIX (as for build_nitro.sh); ENCLAVE_MEMORY_MIB (default
#      4096), ENCLAVE_CPUS (default 2), STARTUP_WAIT (default 15), ENCLAVE_NAME_PREFIX
#      (default cmlp-stage), ORCH_ARGS (extra cmlp-orch flags, split on spaces),
#      HOST_BLIND=1, LISTEN (default 0.0.0.0:8080), SERVE_ONLY=1, GENERATE_ARGS,
#      DEBUG_MODE=1 (nitro-cli --debug-mode: the console is readable, but the NSM then
#      reports all-zero PCRs, so the pinned pipeline refuses the stages: debugging only).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../deploy/nitro/lib.sh
. "$CMLP_ROOT/deploy/nitro/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

parse_args "$@"
args=("${ARGS[@]}")
[ "${#args[@]}" -le 3 ] || die "too many arguments (see --help)"
text="${args[0]:-The capital of France is}"
max_tokens="${args[1]:-20}"
n="${args[2]:-2}"
check_stages "$n"
memory="${ENCLAVE_MEMORY_MIB:-4096}"
cpus="${ENCLAVE_CPUS:-2}"
startup_wait="${STARTUP_WAIT:-15}"
name_prefix="${ENCLAVE_NAME_PREFIX:-cmlp-stage}"
for pair in "max_tokens=$max_tokens" "ENCLAVE_MEMORY_MIB=$memory" "ENCLAVE_CPUS=$cpus"; do
    [[ "${pair#*=}" =~ ^[1-9][0-9]*$ ]] || die "${pair%%=*} must be a positive integer, got '${pair#*=}'"
done
[[ "$startup_wait" =~ ^[0-9]+$ ]] || die "STARTUP_WAIT must be a number of seconds"

# ---------------------------------------------------------------------------
# what scripts/build_nitro.sh produced
# ---------------------------------------------------------------------------
pinned="$(pinned_manifest_path "$n")"
measurements=()
missing=()
for ((i = 0; i < n; i++)); do
    [ -f "$(eif_path "$n" "$i")" ] || missing+=("$(eif_path "$n" "$i")")
    [ -f "$(measurements_path "$n" "$i")" ] || missing+=("$(measurements_path "$n" "$i")")
    measurements+=("$(measurements_path "$n" "$i")")
done
[ -f "$pinned" ] || missing+=("$pinned")
if [ "${#missing[@]}" -gt 0 ]; then
    is_dry || die "missing ${missing[*]}: run scripts/build_nitro.sh $n first"
    log "dry run: no build for $n stages in $NITRO_BUILD_DIR; using placeholder pins"
    measurements=()
fi

need nitro-cli jq
host_cmd=cmlp-orch
[ "$HOST_BLIND" = 1 ] && host_cmd=cmlp
if ! is_dry && ! command -v "$host_cmd" >/dev/null; then
    # shellcheck disable=SC1091
    [ -f "$CMLP_VENV/bin/activate" ] && . "$CMLP_VENV/bin/activate"
    command -v "$host_cmd" >/dev/null \
        || die "$host_cmd not found: install the wheel with the nitro extra (docs/nitro.md)"
fi
[ "${DEBUG_MODE:-0}" = 1 ] && log "DEBUG_MODE=1: the NSM reports all-zero PCRs in debug mode," \
    "so the stages will refuse each other (PCR8 pin); use it to read the console only"

if is_dry; then
    run_dir="${TMPDIR:-/tmp}/cmlp-nitro.XXXXXX"
    log "dry run: printing the commands, running none of them"
else
    run_dir="$(mktemp -d "${TMPDIR:-/tmp}/cmlp-nitro.XXXXXX")"
fi

# ---------------------------------------------------------------------------
# enclaves, terminated on the way out whatever happens
# ---------------------------------------------------------------------------
launched=()          # enclave names, in launch order
ids=()               # their IDs, once known
cleanup() {
    local i
    for ((i = ${#launched[@]} - 1; i >= 0; i--)); do
        if is_dry; then
            show nitro-cli terminate-enclave --enclave-id "${ids[i]}"
        elif [ -n "${ids[i]:-}" ]; then
            nitro-cli terminate-enclave --enclave-id "${ids[i]}" >&2 \
                || log "could not terminate enclave ${ids[i]}"
        else
            nitro-cli terminate-enclave --enclave-name "${launched[i]}" >&2 \
                || log "could not terminate enclave ${launched[i]}"
        fi
    done
    is_dry || rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# enclave_field NAME FIELD: FIELD of the one running enclave called NAME (else empty).
# shellcheck disable=SC2016  # $name and $field are jq variables
field_filter='[.[] | select(.EnclaveName == $name)] | if length == 1 then .[0][$field] else empty end'
enclave_field() {
    nitro-cli describe-enclaves | jq -r --arg name "$1" --arg field "$2" "$field_filter"
}

cids=()
for ((i = 0; i < n; i++)); do
    name="$name_prefix$i"
    launch=(nitro-cli run-enclave --eif-path "$(eif_path "$n" "$i")" --memory "$memory"
            --cpu-count "$cpus" --enclave-name "$name")
    [ "${DEBUG_MODE:-0}" = 1 ] && launch+=(--debug-mode)
    if is_dry; then
        show "${launch[@]}"
        for field in EnclaveID EnclaveCID; do
            printf "+ nitro-cli describe-enclaves | jq -r --arg name %q --arg field %s '%s'\n" \
                "$name" "$field" "$field_filter"
        done
        launched+=("$name")
        ids+=("i-dry-run-enc$i")
        cids+=("$((DRY_RUN_FIRST_CID + i))")
        continue
    fi
    [ -z "$(enclave_field "$name" EnclaveID)" ] \
        || die "an enclave named $name is already running (nitro-cli terminate-enclave --enclave-name $name)"
    log "launching stage $i: $name ($memory MiB, $cpus CPUs)"
    launched+=("$name")
    ids+=("")
    "${launch[@]}" >&2
    id="$(enclave_field "$name" EnclaveID)"
    cid="$(enclave_field "$name" EnclaveCID)"
    [ -n "$id" ] && [[ "$cid" =~ ^[0-9]+$ ]] || die "enclave $name is not running (nitro-cli describe-enclaves)"
    ids[i]="$id"
    cids+=("$cid")
    log "stage $i: enclave $id, CID $cid"
done

# ---------------------------------------------------------------------------
# the host's manifest: the images' own, with the real CIDs
# ---------------------------------------------------------------------------
host_manifest="$run_dir/manifest.json"
cid_list="$(IFS=,; echo "${cids[*]}")"
if [ -f "$pinned" ]; then
    emit "$host_manifest" nitro_manifest host "$pinned" "$cid_list" "${measurements[@]}"
else   # dry run without a build: placeholder pins
    emit "$host_manifest" nitro_manifest host \
        <(nitro_manifest pin "$MANIFESTS/manifest_${n}stage_${MANIFEST_KIND}.json" "$DRY_RUN_PCR8") "$cid_list"
fi

log "waiting ${startup_wait}s for the stages to load the model"
run sleep "$startup_wait"
if [ "$HOST_BLIND" = 1 ]; then
    listen="${LISTEN:-0.0.0.0:8080}"
    serve=(cmlp serve --manifest "$host_manifest" --listen "$listen" --attestation nitro
           --host-attestation none)
    log "host manifest for clients: $host_manifest"
    if [ "${SERVE_ONLY:-0}" = 1 ]; then
        run "${serve[@]}"
        exit 0
    fi
    read -r -a gen_args <<<"${GENERATE_ARGS:-}"
    connect="127.0.0.1:${listen##*:}"
    if is_dry; then
        show "${serve[@]}"
        printf '  &
'
        show cmlp generate --connect "$connect" --manifest "$host_manifest" --text "$text" \
            --max-tokens "$max_tokens" --profile production "${gen_args[@]}"
        exit 0
    fi
    "${serve[@]}" &
    serve_pid=$!
    # shellcheck disable=SC2064  # expand now: stop the server, then the enclaves
    trap "kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null; cleanup" EXIT
    for _ in $(seq 1 120); do
        kill -0 "$serve_pid" 2>/dev/null || die "cmlp serve exited (see its error above)"
        (exec 3<>"/dev/tcp/127.0.0.1/${listen##*:}") 2>/dev/null && break
        sleep 1
    done
    cmlp generate --connect "$connect" --manifest "$host_manifest" --text "$text" \
        --max-tokens "$max_tokens" --profile production "${gen_args[@]}"
    exit 0
fi
read -r -a orch_args <<<"${ORCH_ARGS:-}"
run cmlp-orch --manifest "$host_manifest" --text "$text" --max-tokens "$max_tokens" \
    --attestation nitro --host-attestation none "${orch_args[@]}"
