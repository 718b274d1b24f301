#!/usr/bin/env bash
# The README, as a new user runs it: its commands in order on a fresh copy of this checkout
# (tracked files only: no .venv, no model/, an empty wheels/), failing on the first error.
#   1. the quick start: scripts/run_local.sh (scripts/test.sh is skipped: it is what runs this);
#   2. every line of "Running by hand", right after it, in the same directory;
#   then every background stage must have exited 0.
# The commands are read from README.md itself, so the README cannot drift from what works.
# Usage: scripts/walkthrough.sh
# Env: WALKTHROUGH_DIR   where to put the copy (default: a new temporary directory, removed after
#                        success; kept after a failure)
#      WALKTHROUGH_VENV  a venv whose installed packages the copy's fresh .venv may use (offline,
#                        pip without an index); without it setup_env.sh installs from PyPI
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readme="$CMLP_ROOT/README.md"
work="${WALKTHROUGH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cmlp-walkthrough.XXXXXX")}"
copy="$work/cmlp"
[ ! -e "$copy" ] || die "$copy already exists"

# -- the commands, from the README ----------------------------------------------------------
# block N of a section: the fenced ```bash lines, comments stripped
readme_block() {
    python3 - "$readme" "$1" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
title = sys.argv[2]
if title == "(top)":
    start = 0
else:
    m = re.search(rf"^## {re.escape(title)}\n", text, re.M)
    if not m:
        sys.exit(f"README.md has no section '## {title}'")
    start = m.end()
block = re.search(r"^```bash\n(.*?)^```", text[start:], re.M | re.S)
if not block:
    sys.exit(f"README.md: no bash block in '{title}'")
for line in block.group(1).splitlines():
    line = re.sub(r"\s+#.*$", "", line).strip()
    if line:
        print(line)
PY
}
quick=$(readme_block "(top)")
by_hand=$(readme_block "Running by hand")
grep -qx "scripts/run_local.sh" <<<"$quick" || die "the quick start no longer runs scripts/run_local.sh"

# -- a fresh copy -----------------------------------------------------------------------
git -C "$CMLP_ROOT" rev-parse --git-dir >/dev/null 2>&1 || die "$CMLP_ROOT is not a git checkout"
log "copying the tracked files of $CMLP_ROOT to $copy"
mkdir -p "$copy"
(cd "$CMLP_ROOT" && git ls-files -z | xargs -0 tar -cf - 2>/dev/null) | (cd "$copy" && tar -xf -)
[ ! -e "$copy/model" ] || die "the copy has a model/ already"
if compgen -G "$copy/wheels/*.whl" >/dev/null; then die "the copy has wheels already"; fi

# the user's shell: nothing of this checkout's environment leaks into the copy
clean_path=$(tr ':' '\n' <<<"$PATH" | grep -v -x -F "${VIRTUAL_ENV:-/nonexistent}/bin" | paste -sd: -)
env_args=(env -u PYTHONPATH -u VIRTUAL_ENV -u CMLP_VENV -u MODEL_DIR -u MANIFEST -u MANIFESTS
          -u CMLP_SKIP_SETUP -u CMLP_STAGE_LOG -u STAGE_LOG_DIR -u CMLP_PROGRESS "PATH=$clean_path"
          OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}")
if [ -n "${WALKTHROUGH_VENV:-}" ]; then
    # a fresh .venv that sees the given venv's packages, except any cmlp (links in a directory
    # of our own, never that venv's files); pip works offline
    shared=$("$WALKTHROUGH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    log "creating $copy/.venv on top of the packages of $WALKTHROUGH_VENV (offline)"
    mkdir -p "$work/shared-packages"
    for entry in "$shared"/*; do
        case "$(basename "$entry")" in
            cmlp*|__editable__*|_cmlp*|*.pth) ;;
            *) ln -s "$entry" "$work/shared-packages/" ;;
        esac
    done
    # no bundled pip/setuptools of its own: they would shadow the newer ones of that venv
    "$WALKTHROUGH_VENV/bin/python" -m venv --without-pip "$copy/.venv"
    own=$("$copy/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    echo "$work/shared-packages" > "$own/zz-walkthrough-shared.pth"
    env_args+=(PIP_NO_INDEX=1)
fi

run_step() {   # run_step TITLE COMMANDS: as a bash script in the copy, stopping at the first error
    local title="$1" body="$2" script
    script="$work/$(tr ' /' '__' <<<"$title").sh"
    {
        echo "set -euo pipefail"
        echo "cd \"$copy\""
        echo "trap 'kill \$(jobs -p) 2>/dev/null || true' EXIT"
        while IFS= read -r line; do             # each README command, echoed as it runs
            printf 'echo %q >&2\n%s\n' "+ $line" "$line"
        done <<<"$body"
        # every stage started in the background must end cleanly after the orchestrator
        # shellcheck disable=SC2016  # expanded by the generated script
        echo 'for job in $(jobs -p); do wait "$job" || { echo "a background command exited $?" >&2; exit 1; }; done'
    } >"$script"
    log "walkthrough: $title"
    "${env_args[@]}" bash "$script" || die "walkthrough step '$title' failed (copy kept in $work)"
}

quick_cmds=$(grep -v -x "scripts/test.sh" <<<"$quick")
run_step "quick start" "$quick_cmds"
run_step "Running by hand" "$by_hand"
log "walkthrough passed: the quick start, then Running by hand"
[ -n "${WALKTHROUGH_DIR:-}" ] || rm -rf "$work"
