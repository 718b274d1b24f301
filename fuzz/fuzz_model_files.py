"""Fuzzed config.json and/or model.safetensors -> the model loading API (pipeline.md 5.1-5.2).

A tiny valid model (2 layers, n_embd 2) is written once at start-up with
cmlp.model.synthetic; each input replaces one or both of its files in a work
directory, then load_config + load_shard_weights (+ weight hashes) run on it.
Only ModelError is an expected outcome.

Input layout (FuzzedDataProvider: integers from the END, bytes from the front):
  mode byte (last)   bit 0: config.json from the input; bit 1: model.safetensors
                     from the input (neither: both); bits 2-3: layer_start;
                     bits 4-5: layer_end - layer_start - 1
  config length      when both files come from the input: ConsumeIntInRange(0, 65535)
  files              config bytes first, then the safetensors bytes
"""

import os
import shutil
import tempfile
from pathlib import Path

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.errors import ModelError
    from cmlp.model.config import CONFIG_FILE, WEIGHTS_FILE, Gpt2Config, load_config
    from cmlp.model.synthetic import write_model
    from cmlp.model.weights import load_shard_weights

MAX_INPUT = 1 << 16
TINY = Gpt2Config(vocab_size=4, n_positions=2, n_embd=2, n_layer=2, n_head=1)


def scratch_root() -> Path:
    """A per-process directory on tmpfs when there is one (two small writes per input)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    for stale in Path(base or tempfile.gettempdir()).glob("cmlp-fuzz-model-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)  # libFuzzer exits without cleanup
    root = Path(base or tempfile.gettempdir()) / f"cmlp-fuzz-model-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    return root


def tiny_model_files() -> tuple[bytes, bytes]:
    """(config.json, model.safetensors) bytes of the valid base model."""
    with tempfile.TemporaryDirectory() as tmp:
        write_model(tmp, TINY, attn_bias=False)
        return (Path(tmp, CONFIG_FILE).read_bytes(), Path(tmp, WEIGHTS_FILE).read_bytes())


ROOT = scratch_root()
BASE_CONFIG, BASE_WEIGHTS = tiny_model_files()


def split_input(data: bytes):
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 255)
    which = mode & 3 or 3
    start = (mode >> 2) & 3
    end = start + 1 + ((mode >> 4) & 3)
    if which == 3:
        config = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 65535))
        weights = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif which == 1:
        config, weights = fdp.ConsumeBytes(fdp.remaining_bytes()), BASE_WEIGHTS
    else:
        config, weights = BASE_CONFIG, fdp.ConsumeBytes(fdp.remaining_bytes())
    return config, weights, start, end


def test_one_input(data: bytes) -> None:
    config_bytes, weights_bytes, start, end = split_input(data)
    (ROOT / CONFIG_FILE).write_bytes(config_bytes)
    (ROOT / WEIGHTS_FILE).write_bytes(weights_bytes)
    try:
        config = load_config(ROOT)
        weights = load_shard_weights(ROOT, config, start, end)
    except ModelError:
        return
    # whatever loaded is what the file holds, within the file's size
    assert weights.nbytes <= len(weights_bytes), "more weight bytes than the file has"
    assert len(weights.hashes()) == len(weights.tensors)


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=16384)
