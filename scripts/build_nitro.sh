#!/usr/bin/env bash
# Build one signed AWS Nitro Enclave image (EIF) per pipeline stage (docs/nitro.md).
#
# Usage: scripts/build_nitro.sh [--dry-run] [num_stages=2]
#
#   1. the cmlp wheel: $WHEEL, else the newest wheels/cmlp-*-manylinux*_<arch>.whl, else
#      scripts/build_wheel.sh builds one; the image's Python is the wheel's (cp311 -> 3.11);
#   2. the EIF signing key and certificate (ECDSA P-384): $SIGNING_KEY / $SIGNING_CERT, or
#      generated once with openssl into $NITRO_BUILD_DIR/signing/;
#   3. PCR8 (the signing certificate's measurement) with `nitro-cli pcr`, and the stage
#      manifest manifests/manifest_<n>stage_vsock.json with every stage pinned to it
#      (an image cannot carry its own PCR0/PCR2: see deploy/nitro/nitro_manifest.py);
#   4. for each stage i: `docker build` (deploy/nitro/Dockerfile, STAGE_IDX=i, that manifest,
#      the model) and `nitro-cli build-enclave`, signed, into
#      $NITRO_BUILD_DIR/<prefix>-<n>stage-s<i>.eif, its PCRs in <same>.pcrs.json;
#   5. prints every stage's PCR0/1/2/8 and the pins; scripts/run_nitro.sh uses these files.
#
# --dry-run (or DRY_RUN=1): print every command instead of running it (needs no docker,
# nitro-cli, jq or openssl; writes nothing).
# Env: MODEL_DIR (default model/), NITRO_BUILD_DIR (default build/nitro), IMAGE_PREFIX
#      (default cmlp-gpt2), WHEEL, BASE_IMAGE (default python:<wheel's X.Y>-slim-bookworm),
#      SIGNING_KEY, SIGNING_CERT, SIGNING_DAYS (default 365, for a generated certificate),
#      HOST_BLIND=1 (images for host-blind mode: manifest_<n>stage_hostblind_vsock.json,
#      IMAGE_PREFIX default cmlp-gpt2-hb).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../deploy/nitro/lib.sh
. "$CMLP_ROOT/deploy/nitro/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

parse_args "$@"
args=("${ARGS[@]}")
[ "${#args[@]}" -le 1 ] || die "too many arguments (see --help)"
n="${args[0]:-2}"
check_stages "$n"
template="$MANIFESTS/manifest_${n}stage_${MANIFEST_KIND}.json"
[ -f "$template" ] || die "no $template"
need docker nitro-cli openssl "${PYTHON:-python3}"
is_dry && log "dry run: printing the commands, running none of them"

# ---------------------------------------------------------------------------
# 1. the wheel, and the base image that matches it
# ---------------------------------------------------------------------------
arch="$(uname -m)"
wheel="${WHEEL:-}"
if [ -z "$wheel" ]; then
    for f in "$CMLP_ROOT"/wheels/cmlp-*-manylinux*_"$arch".whl; do
        [ -e "$f" ] || continue
        if [ -z "$wheel" ] || [ "$f" -nt "$wheel" ]; then wheel="$f"; fi
    done
fi
if [ -z "$wheel" ]; then
    if is_dry; then
        show "$CMLP_ROOT/scripts/build_wheel.sh" --reuse
        wheel="$CMLP_ROOT/wheels/cmlp-VERSION-cp311-cp311-manylinux_2_34_$arch.whl"
    else
        log "no cmlp wheel for $arch in wheels/: building one"
        wheel="$("$CMLP_ROOT/scripts/build_wheel.sh" --reuse | head -n 1)"
    fi
fi
is_dry || [ -f "$wheel" ] || die "no wheel $wheel"
wheel_name="$(basename "$wheel")"
[[ "$wheel_name" =~ ^cmlp-[^-]+-cp([0-9])([0-9]+)-[^-]+-(.+)\.whl$ ]] \
    || die "$wheel_name is not a cmlp CPython wheel"
py_version="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
platform="${BASH_REMATCH[3]}"
[[ "$platform" == *"_$arch"* ]] || die "$wheel_name is not built for $arch"
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE="python:$py_version-slim-bookworm"
    # Debian bookworm has glibc 2.36: a wheel needing a newer one cannot install there.
    if [[ "$platform" =~ manylinux_2_([0-9]+)_ ]] && [ "${BASH_REMATCH[1]}" -gt 36 ]; then
        die "$wheel_name needs glibc 2.${BASH_REMATCH[1]}; set BASE_IMAGE to a Python $py_version image with it"
    fi
fi
log "wheel $wheel_name, base image $BASE_IMAGE"

# ---------------------------------------------------------------------------
# 2. the model
# ---------------------------------------------------------------------------
if [ ! -f "$MODEL_DIR/config.json" ] || [ ! -f "$MODEL_DIR/model.safetensors" ]; then
    if is_dry; then
        show cmlp model init --out "$MODEL_DIR"
    else
        # shellcheck disable=SC1091
        [ -f "$CMLP_VENV/bin/activate" ] && . "$CMLP_VENV/bin/activate"
        command -v cmlp >/dev/null || die "no model in $MODEL_DIR (and no cmlp to create one)"
        ensure_model
    fi
fi

# ---------------------------------------------------------------------------
# 3. the signing key, PCR8, and the manifest baked into every image
# ---------------------------------------------------------------------------
signing_dir="$NITRO_BUILD_DIR/signing"
key="${SIGNING_KEY:-$signing_dir/key.pem}"
cert="${SIGNING_CERT:-$signing_dir/cert.pem}"
run mkdir -p "$NITRO_BUILD_DIR"
if [ -z "${SIGNING_KEY:-}${SIGNING_CERT:-}" ] && [ ! -f "$key" ] && [ ! -f "$cert" ]; then
    log "generating an EIF signing key and certificate in $signing_dir (keep the key safe:"
    log "every enclave it signs is accepted as a stage)"
    run mkdir -p "$signing_dir"
    run openssl ecparam -name secp384r1 -genkey -noout -out "$key"
    run chmod 600 "$key"
    run openssl req -new -x509 -sha384 -key "$key" -days "${SIGNING_DAYS:-365}" \
        -subj "/CN=$IMAGE_PREFIX enclave signing" -out "$cert"
elif ! is_dry; then
    [ -f "$key" ] && [ -f "$cert" ] || die "need both SIGNING_KEY ($key) and SIGNING_CERT ($cert)"
fi
pcr8_file="$signing_dir/pcr8.json"
[ -n "${SIGNING_CERT:-}" ] && pcr8_file="$NITRO_BUILD_DIR/pcr8.json"
run_to "$pcr8_file" nitro-cli pcr --signing-certificate "$cert"
if is_dry; then pcr8="$DRY_RUN_PCR8"; else pcr8="$(nitro_manifest pcr8 "$pcr8_file")"; fi

ctx="$NITRO_BUILD_DIR/context-${n}stage"
manifest_rel="manifests/manifest_${n}stage_${MANIFEST_KIND}.json"
run rm -rf "$ctx"
run mkdir -p "$ctx/wheels" "$ctx/manifests"
run cp "$wheel" "$ctx/wheels/$wheel_name"
if is_dry; then
    show cp -r "$MODEL_DIR" "$ctx/model"
else
    cp -rl "$MODEL_DIR" "$ctx/model" 2>/dev/null || { rm -rf "$ctx/model"; cp -r "$MODEL_DIR" "$ctx/model"; }
fi
run cp "$NITRO_DIR/init.sh" "$ctx/init.sh"
emit "$ctx/$manifest_rel" nitro_manifest pin "$template" "$pcr8"
run cp "$ctx/$manifest_rel" "$(pinned_manifest_path "$n")"

# ---------------------------------------------------------------------------
# 4. one image and one EIF per stage
# ---------------------------------------------------------------------------
for ((i = 0; i < n; i++)); do
    log "stage $i of $n: docker image $(image_tag "$n" "$i"), enclave image $(eif_path "$n" "$i")"
    run docker build -f "$NITRO_DIR/Dockerfile" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "STAGE_IDX=$i" \
        --build-arg "MANIFEST=$manifest_rel" \
        -t "$(image_tag "$n" "$i")" "$ctx"
    run_to "$(measurements_path "$n" "$i")" nitro-cli build-enclave \
        --docker-uri "$(image_tag "$n" "$i")" --output-file "$(eif_path "$n" "$i")" \
        --signing-certificate "$cert" --private-key "$key"
done

# ---------------------------------------------------------------------------
# 5. what to pin
# ---------------------------------------------------------------------------
if is_dry; then
    log "dry run: nothing was built"
    exit 0
fi
pairs=()
for ((i = 0; i < n; i++)); do
    pairs+=("stage $i=$(measurements_path "$n" "$i")")
done
nitro_manifest measurements "${pairs[@]}"
cat <<EOF

Manifest baked into every image, and used by scripts/run_nitro.sh $n:
  $(pinned_manifest_path "$n")
Every stage's expected_measurements there is {"8": "$pcr8"} (PCR8 = the signing certificate),
which the stages pin on each other and the host pins on every stage.
Next: scripts/run_nitro.sh "The capital of France is" 20 $n
EOF
