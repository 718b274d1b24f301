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

# pip_install PYTHON WHAT PIP-ARGS...: say what is installed, let pip show its own progress
# (what it collects, a download bar), then how long it took.  Never `pip -q`: a silent
# install of several minutes looks like a hang.
pip_install() {
    local py="$1" what="$2" t0=$SECONDS
    shift 2
    log "installing $what ..."
    "$py" -m pip install --progress-bar on --disable-pip-version-check "$@" >&2 || return 1
    log "installed $what ($((SECONDS - t0)) s)"
}

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

# start_stage MANIFEST IDX [extra args...]: a stage worker in the background.  Its stderr
# goes to $STAGE_LOG_DIR/stage<IDX>.log (kept when something fails, removed on success);
# CMLP_STAGE_LOG tells cmlp-orch where to look when it cannot reach a stage.
start_stage() {
    local manifest="$1" idx="$2"
    shift 2
    if [ -z "${STAGE_LOG_DIR:-}" ]; then
        STAGE_LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cmlp-stages.XXXXXX")"
        STAGE_LOG_OWNED=1
    fi
    export CMLP_STAGE_LOG="$STAGE_LOG_DIR/stage{idx}.log"
    cmlp-stage --manifest "$manifest" --stage-idx "$idx" --model-dir "$MODEL_DIR" \
        --log-level "${STAGE_LOG_LEVEL:-info}" "$@" 2>"$STAGE_LOG_DIR/stage$idx.log" &
    STAGE_PIDS+=("$!")
}

stop_stages() {
    local rc=$? pid
    for pid in "${STAGE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STAGE_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    STAGE_PIDS=()
    if [ -n "${STAGE_LOG_DIR:-}" ] && [ "${STAGE_LOG_OWNED:-0}" = 1 ]; then
        if [ "$rc" = 0 ] || [ "$rc" = 130 ]; then
            rm -rf "$STAGE_LOG_DIR"
        else
            log "stage logs kept in $STAGE_LOG_DIR"
        fi
        STAGE_LOG_DIR="" STAGE_LOG_OWNED=0
    fi
}

# wait_for_stages MANIFEST: until every stage started by start_stage has loaded its
# weights and listens; a stage that exits first is reported with its own error line.
wait_for_stages() {
    log "starting ${#STAGE_PIDS[@]} stage(s): loading weights"
    python - "$(basename "$0")" "$STAGE_LOG_DIR" "${STAGE_PIDS[@]}" <<'PY' || exit 1
import sys, time
from cmlp.cli.stage_logs import last_error_line
from pathlib import Path

def alive(pid):
    """Running (an exited stage stays a zombie until the shell reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

script, log_dir, pids = sys.argv[1], Path(sys.argv[2]), [int(p) for p in sys.argv[3:]]
pending = dict(enumerate(pids))
deadline = time.monotonic() + 600
while pending:
    for idx, pid in list(pending.items()):
        log = log_dir / f"stage{idx}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if f"stage {idx} ready" in text:
            del pending[idx]
            continue
        if not alive(pid):
            sys.exit(f"[{script}] error: stage {idx} could not start: "
                     f"{last_error_line(log) or 'no output'} (log: {log})")
    if time.monotonic() > deadline:
        sys.exit(f"[{script}] error: stages {sorted(pending)} not ready after 600 s "
                 f"(logs: {log_dir})")
    time.sleep(0.05)
PY
    wait_for_ports "$1"
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
