#!/usr/bin/env bash
# Greedy ids and text of the 2-stage pipeline against Hugging Face transformers
# (GPT2LMHeadModel, float32) on the same weights.  Compares token ids and the decoded
# continuation exactly.  Needs torch + transformers (scripts/setup_env.sh --test).
# Usage: scripts/verify_vs_python.sh [text] [max_tokens=20]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

text="${1:-The capital of France is}"
max_tokens="${2:-20}"
manifest="${MANIFEST:-$MANIFESTS/manifest_2stage.json}"
ensure_env --test
ensure_model
lat=$(mktemp)
trap 'stop_stages; rm -f "$lat"' EXIT
start_stage "$manifest" 0
start_stage "$manifest" 1
wait_for_stages "$manifest"
cmlp-orch --manifest "$manifest" --text "$text" --max-tokens "$max_tokens" \
    --latency-out "$lat" >/dev/null 2>&1
stop_stages
python - "$MODEL_DIR" "$text" "$max_tokens" "$lat" <<'PY'
import json, sys
import torch
from transformers import GPT2LMHeadModel
from cmlp.tokenizer import load_tokenizer

model_dir, text, n, lat = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = load_tokenizer()
ids = tok.encode(text)
torch.set_num_threads(2)
model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                         pad_token_id=tok.eos_id)
ref = out[0, len(ids):].tolist()
ours = json.load(open(lat))["generated_ids"]
print("reference ids:", ref)
print("cmlp ids:     ", ours)
print("reference text:", repr(tok.decode(ref)))
print("cmlp text:     ", repr(tok.decode(ours)))
if ours == ref:
    print("PASS: pipeline output matches the transformers reference exactly.")
    sys.exit(0)
first = next(i for i, (a, b) in enumerate(zip(ours + [None], ref + [None])) if a != b)
print(f"MISMATCH detected at token {first}.")
sys.exit(1)
PY
