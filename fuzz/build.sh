#!/usr/bin/env bash
# Build the Cython extensions that parse peer bytes (_frame, _record, _netio) with
# libFuzzer coverage and AddressSanitizer into fuzz/build/lib, used only by the
# harnesses (fuzz/_harness.py).  Needs clang; installs it with apt when run as root.
# Exit status 3 means "no clang" or "atheris has no asan_with_fuzzer.so": the harnesses
# then fall back to Python-level coverage.
# Usage: fuzz/build.sh   (PYTHON=... picks the interpreter, default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3}"

if ! "$py" -c 'import atheris, os, sys
sys.exit(not os.path.isfile(os.path.join(atheris.path(), "asan_with_fuzzer.so")))'; then
    echo "[fuzz/build.sh] atheris lacks asan_with_fuzzer.so: Python-level coverage only" >&2
    exit 3
fi
if ! command -v clang >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[fuzz/build.sh] installing clang" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang >&2
    else
        echo "[fuzz/build.sh] clang not found: harnesses will use Python-level coverage only" >&2
        exit 3
    fi
fi

cd "$root"
log="$here/build/build.log"
mkdir -p "$here/build"
if ! CC=clang CMLP_COVERAGE=1 CMLP_SANITIZE=address CMLP_ONLY=_frame,_record,_netio \
        "$py" setup.py -q build_ext --build-lib "$here/build/lib" \
        --build-temp "$here/build/temp" >"$log" 2>&1; then
    cat "$log" >&2
    echo "[fuzz/build.sh] instrumented build failed (log: $log)" >&2
    exit 1
fi
echo "[fuzz/build.sh] instrumented extensions in $here/build/lib/cmlp" >&2
