#!/usr/bin/env bash
# The gates, in one command (`make check`; CI runs it before the slow tier):
#   ruff lint, ruff format + import order, mypy on cmlp/, cython-lint on pyx/,
#   ShellCheck on the shell scripts, then the fast test tier (pytest's default: not slow).
# Every gate runs even when an earlier one fails; the summary names the failures.
# Usage: scripts/check.sh [--no-tests] [pytest args...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_tests=1
if [ "${1:-}" = "--no-tests" ]; then
    run_tests=0
    shift
fi
ensure_env --test
cd "$CMLP_ROOT"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

failed=()
gate() {   # gate NAME COMMAND...: run one gate, remember a failure, go on
    local name="$1"
    shift
    log "gate: $name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

shell_scripts=(scripts/*.sh fuzz/*.sh deploy/*/*.sh .ci/run)
gate "ruff lint" ruff check --ignore I001 .
# import order is applied by `make format` together with the formatter
gate "ruff format" sh -c 'ruff check --select I001 --output-format concise . && ruff format --check .'
gate "mypy" mypy
gate "cython-lint" cython-lint pyx/
gate "shellcheck" shellcheck -x "${shell_scripts[@]}"
if [ "$run_tests" = 1 ]; then
    gate "fast tests" python -m pytest -q "$@"
fi

if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED gates: ${failed[*]}"
    exit 1
fi
log "all gates passed"
