#!/usr/bin/env bash
# Download published model files from Hugging Face for cmlp.
#
#   scripts/download_model.sh [DIR]                  # GPT-2 small (default: model/ under the repo)
#   scripts/download_model.sh --model NAME [DIR]     # NAME: gpt2 | smollm2-135m | qwen2.5-0.5b
#                                                    #       | llama-3.2-1b (default DIR: model-NAME/)
#
#   gpt2          openai-community/gpt2        sizes pinned below and verified
#   smollm2-135m  HuggingFaceTB/SmolLM2-135M   bf16
#   qwen2.5-0.5b  Qwen/Qwen2.5-0.5B            bf16
#   llama-3.2-1b  meta-llama/Llama-3.2-1B      bf16, gated: accept the licence on the Hub and
#                                              export HF_TOKEN=hf_... first
#
# Fetches model.safetensors, config.json, tokenizer.json (and for the Llama-family
# models generation_config.json and tokenizer_config.json) into DIR, skipping
# files that already exist.  GPT-2's sizes are pinned; the other models are
# verified after the download by cmlp's checkpoint checker (every tensor's
# name, dtype, shape and byte range against config.json).  Without network
# access, `cmlp model init --arch llama|qwen2 --preset NAME` writes a synthetic
# model with the same shapes and layout instead.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    echo "download_model.sh: $*" >&2
    exit 1
}

file_size() {
    wc -c <"$1" | tr -d ' '
}

NAME=gpt2
if [[ "${1:-}" == "--model" ]]; then
    [[ $# -ge 2 ]] || die "--model needs a NAME"
    NAME="$2"
    shift 2
fi

COMMON_FILES=("model.safetensors" "config.json" "tokenizer.json")
case "$NAME" in
gpt2)
    HUB=openai-community/gpt2
    DEFAULT_DIR="$REPO_DIR/model"
    # name and size in bytes of each published file
    FILES=("model.safetensors 548105171" "config.json 665" "tokenizer.json 1355256")
    ;;
smollm2-135m | qwen2.5-0.5b | llama-3.2-1b)
    case "$NAME" in
    smollm2-135m) HUB=HuggingFaceTB/SmolLM2-135M ;;
    qwen2.5-0.5b) HUB=Qwen/Qwen2.5-0.5B ;;
    llama-3.2-1b) HUB=meta-llama/Llama-3.2-1B ;;
    esac
    DEFAULT_DIR="$REPO_DIR/model-$NAME"
    FILES=()
    for f in "${COMMON_FILES[@]}" generation_config.json tokenizer_config.json; do
        FILES+=("$f -")      # "-": size not pinned, checked structurally afterwards
    done
    ;;
*)
    die "unknown model '$NAME' (gpt2, smollm2-135m, qwen2.5-0.5b, llama-3.2-1b)"
    ;;
esac
BASE_URL="https://huggingface.co/$HUB/resolve/main"
DEST="${1:-$DEFAULT_DIR}"

AUTH=()
if [[ -n "${HF_TOKEN:-}" ]]; then
    AUTH=(--header "Authorization: Bearer $HF_TOKEN")
fi

command -v curl >/dev/null 2>&1 || die "curl is required"
mkdir -p "$DEST"

for entry in "${FILES[@]}"; do
    read -r name size <<<"$entry"
    target="$DEST/$name"
    if [[ -f "$target" ]]; then
        actual="$(file_size "$target")"
        [[ "$size" == "-" || "$actual" == "$size" ]] ||
            die "$target exists but has $actual bytes, expected $size (delete it to re-download)"
        echo "skip $name (already present)"
        continue
    fi
    if [[ "$size" == "-" ]]; then echo "fetch $name"; else echo "fetch $name ($size bytes)"; fi
    partial="$target.partial"
    # --fail: an HTTP error is an error, not a saved error page
    curl --fail --location --show-error --retry 3 "${AUTH[@]}" --output "$partial" \
        "$BASE_URL/$name" ||
        { rm -f "$partial"; die "download of $name failed (gated model? set HF_TOKEN)"; }
    actual="$(file_size "$partial")"
    if [[ "$size" != "-" && "$actual" != "$size" ]]; then
        rm -f "$partial"
        die "$name: got $actual bytes, expected $size"
    fi
    mv "$partial" "$target"
done

if [[ "$NAME" != gpt2 ]]; then
    PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 - "$DEST" <<'PY' ||
import sys
from cmlp.model.llama.config import load_config
from cmlp.model.llama.weights import shard_tensor_shapes
from cmlp.model.registry import detect_family
from cmlp.model.safetensors_io import Checkpoint
d = sys.argv[1]
family = detect_family(d)
cfg = load_config(d, family)
ckpt = Checkpoint(d)
for name, shape in shard_tensor_shapes(cfg, 0, cfg.num_hidden_layers).items():
    ckpt.check(name, shape)
print(f"{d}: {family}, {cfg.num_hidden_layers} layers, every tensor checked")
PY
        die "the downloaded files do not form a valid checkpoint"
fi

echo "model files in $DEST"
