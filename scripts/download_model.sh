#!/usr/bin/env bash
# Download the published GPT-2 small files (openai-community/gpt2) for cmlp.
#
#   scripts/download_model.sh [DIR]      # default: model/ under the repository
#
# Fetches model.safetensors, config.json and tokenizer.json from Hugging Face
# into DIR, skipping files that already exist with the expected size, and
# verifies every size after the download.  Works from any directory.  Without
# network access, `cmlp model init --out DIR` writes a synthetic model in the
# same layout instead.
set -euo pipefail

BASE_URL="https://huggingface.co/openai-community/gpt2/resolve/main"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO_DIR/model}"

# name and size in bytes of each published file
FILES=(
    "model.safetensors 548105171"
    "config.json 665"
    "tokenizer.json 1355256"
)

die() {
    echo "download_model.sh: $*" >&2
    exit 1
}

file_size() {
    wc -c <"$1" | tr -d ' '
}

command -v curl >/dev/null 2>&1 || die "curl is required"
mkdir -p "$DEST"

for entry in "${FILES[@]}"; do
    read -r name size <<<"$entry"
    target="$DEST/$name"
    if [[ -f "$target" ]]; then
        actual="$(file_size "$target")"
        [[ "$actual" == "$size" ]] ||
            die "$target exists but has $actual bytes, expected $size (delete it to re-download)"
        echo "skip $name (already present)"
        continue
    fi
    echo "fetch $name ($size bytes)"
    partial="$target.partial"
    # --fail: an HTTP error is an error, not a saved error page
    curl --fail --location --show-error --retry 3 --output "$partial" "$BASE_URL/$name" ||
        { rm -f "$partial"; die "download of $name failed"; }
    actual="$(file_size "$partial")"
    if [[ "$actual" != "$size" ]]; then
        rm -f "$partial"
        die "$name: got $actual bytes, expected $size"
    fi
    mv "$partial" "$target"
done

echo "model files in $DEST"
