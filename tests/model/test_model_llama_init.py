"""`cmlp model init --arch llama|qwen2` and the model-directory tokenizer loader."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cmlp.errors import ModelError
from cmlp.model.llama.synthetic import PRESETS, init_model
from cmlp.model.registry import detect_family, load_shard
from cmlp.tokenizer import load_model_tokenizer, load_tokenizer
from tests.helpers.pipeline import cli_env


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cmlp.cli.main", "model", *args], capture_output=True, text=True, env=cli_env()
    )


@pytest.mark.parametrize("arch,dtype", [("llama", "bf16"), ("qwen2", "fp32"), ("llama", "fp16")])
def test_init_writes_the_published_layout(tmp_path, arch, dtype):
    out = tmp_path / arch
    r = cli("init", "--arch", arch, "--preset", "tiny", "--dtype", dtype, "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["cmlp_synthetic"] is True
    assert detect_family(out) == arch
    shard = load_shard(out, 0, 4, threads=1)
    tok = load_model_tokenizer(out)
    logits = shard.forward(np.asarray([tok.encode("Hello, world")], np.uint32))
    assert logits.shape == (1, cfg["vocab_size"]) and np.isfinite(logits).all()
    hashes = cli("hashes", "--model-dir", str(out), "--layers", "0:2").stdout.split()
    assert hashes == [h for _, h in load_shard(out, 0, 2, threads=1).weight_hashes()]


def test_transformers_loads_what_init_writes(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = init_model(tmp_path / "q", "qwen2", "tiny", dtype="bf16")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = [[3, 100, 200, 7]]
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits[0, -1].numpy()
    ours = load_shard(out, 0, 4, threads=1).forward(np.asarray(ids))[0]
    assert np.abs(ours - ref).max() <= 1e-4


def test_init_refuses_bad_combinations(tmp_path):
    r = cli("init", "--arch", "qwen2", "--preset", "smollm2-135m", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "not a qwen2 preset" in r.stderr
    r = cli("init", "--arch", "gpt2", "--dtype", "bf16", "--out", str(tmp_path / "y"))
    assert r.returncode != 0 and "fp32 only" in r.stderr
    init_model(tmp_path / "z", "llama")
    with pytest.raises(ModelError, match="already holds a model"):
        init_model(tmp_path / "z", "llama")


def test_model_tokenizer_exposes_special_tokens_and_template(tmp_path):
    out = init_model(tmp_path / "m", "llama")
    tok = load_model_tokenizer(out)
    assert tok.eos_ids == (0,) and tok.eos_id == 0
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token is None
    assert "<|im_start|>" in tok.chat_template
    text = "héllo <|im_end|> wörld"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_end|>") == [2]


def test_model_tokenizer_reads_published_forms(tmp_path):
    out = init_model(tmp_path / "m", "llama")
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0, 2]}))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<|im_start|>", "lstrip": False},
                "eos_token": "<|im_end|>",
                "chat_template": [
                    {"name": "default", "template": "T"},
                    {"name": "tool_use", "template": "U"},
                ],
            }
        )
    )
    tok = load_model_tokenizer(out)
    assert tok.eos_ids == (2, 0) and tok.bos_token == "<|im_start|>" and tok.chat_template == "T"
    (out / "generation_config.json").unlink()  # falls back to config.json's eos_token_id
    assert load_model_tokenizer(out).eos_ids == (0,)


@pytest.mark.parametrize(
    "file,content,fragment",
    [
        ("generation_config.json", {"eos_token_id": 10**9}, "is not a token id"),
        ("generation_config.json", {"eos_token_id": "x"}, "is not a token id"),
        ("generation_config.json", "[1]", "not a JSON object"),
        ("tokenizer_config.json", {"chat_template": 5}, "chat_template is not a string"),
        ("tokenizer_config.json", {"eos_token": 5}, "is not a string"),
        ("tokenizer_config.json", "{bad", "cannot read"),
    ],
)
def test_model_tokenizer_errors_name_the_file(tmp_path, file, content, fragment):
    out = init_model(tmp_path / "m", "llama")
    (out / file).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ModelError, match=fragment) as info:
        load_model_tokenizer(out)
    assert file in str(info.value)


def test_tokenizer_without_endoftext_loads(tmp_path):
    out = init_model(tmp_path / "m", "llama")
    doc = json.loads((out / "tokenizer.json").read_text())
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] != "<|endoftext|>"]
    doc["model"]["vocab"].pop("<|endoftext|>")
    (out / "tokenizer.json").write_text(json.dumps(doc))
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.eos_id is None and tok.eos_ids == ()
    assert load_tokenizer().eos_id == 50256  # GPT-2's embedded default is unchanged


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,preset", [("llama", "smollm2-135m"), ("qwen2", "qwen2.5-0.5b"), ("llama", "llama-3.2-1b")]
)
def test_full_size_presets(tmp_path, arch, preset):
    """Real shapes, bf16: written, loaded in two halves, one prefill + decode step."""
    out = init_model(tmp_path / preset, arch, preset, dtype="bf16")
    shape = PRESETS[arch][preset]
    n = shape["num_hidden_layers"]
    first = load_shard(out, 0, n // 2, threads=2, max_seq_len=64)
    last = load_shard(out, n // 2, n, threads=2, max_seq_len=64)
    assert first.wire_dtype == "BF16"
    h = first.forward(np.asarray([[1, 2, 3, 4]], np.uint32))
    logits = last.forward(h)
    assert logits.shape == (1, shape["vocab_size"]) and np.isfinite(logits).all()
    logits = last.forward(first.forward(np.asarray([[int(logits[0].argmax())]], np.uint32)))
    assert np.isfinite(logits).all()
