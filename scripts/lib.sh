#!/usr/bin/env bash
# Shared helpers for the scripts in this folder (sourced, not run).
# Every script works from any working directory: paths are resolved from here.

CMLP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMLP_VENV="${CMLP_VENV:-$CMLP_ROOT/.venv}"
MODEL_DIR="${MODEL_DIR:-$CMLP_ROOT/model}"
export MANIFESTS="$CMLP_ROOT/manifests"
STAGE_PIDS=()

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install what is missing (system packages, venv, cmlp) unless CMLP_SKIP_SETUP=1.
# shellcheck disable=SC2120  # optional args: --test
ensure_env() {
    if [ "${CMLP_SKIP_SETUP:-0}" != 1 ]; then
        "$CMLP_ROOT/scripts/setup_env.sh" "$@" >&2 || die "environment setup failed"
    fi
    # shellcheck disable=SC1091
    [ -f "$CMLP_VENV/bin/activate" ] && . "$CMLP_VENV/bin/activate"
    command -v cmlp-stage >/dev/null || die "cmlp is not installed (run scripts/setup_env.sh)"
}

# Create the embedded default model (synthetic GPT-2 small) when model/ is empty.
ensure_model() {
    if [ ! -f "$MODEL_DIR/model.safetensors" ] || [ ! -f "$MODEL_DIR/config.json" ]; then
        log "no model in $MODEL_DIR: writing the synthetic GPT-2 small default (no internet needed)"
        cmlp model init --out "$MODEL_DIR" >&2 || die "could not create the default model"
    fi
}

# start_stage MANIFEST IDX [extra args...]: a stage worker in the background.
start_stage() {
    local manifest="$1" idx="$2"
    shift 2
    cmlp-stage --manifest "$manifest" --stage-idx "$idx" --model-dir "$MODEL_DIR" \
        --log-level "${STAGE_LOG_LEVEL:-error}" "$@" &
    STAGE_PIDS+=("$!")
}

stop_stages() {
    local pid
    for pid in "${STAGE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STAGE_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    STAGE_PIDS=()
}

# wait_for_ports MANIFEST: until every stage's control port is listening (checked
# passively in /proc/net/tcp*, so no stray connection reaches the stages).
wait_for_ports() {
    python - "$1" <<'PY'
import sys, time
from cmlp.manifest import Manifest
from cmlp.transport.sockets import TcpAddr

def listening():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A":                      # TCP_LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports

m = Manifest.load(sys.argv[1])
want = {s.endpoint.control.endpoint.port for s in m.stages
        if isinstance(s.endpoint.control.endpoint, TcpAddr)}
deadline = time.monotonic() + 120
while not want <= listening():
    if time.monotonic() > deadline:
        sys.exit(f"stages not listening on ports {sorted(want - listening())}")
    time.sleep(0.05)
PY
}
