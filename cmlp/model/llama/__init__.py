"""Llama family: Llama 3.x, SmolLM2, TinyLlama (LlamaForCausalLM layout).

config.py     LlamaConfig (also used by qwen2), RoPE inverse frequencies incl. llama3 scaling
weights.py    HF tensor names/shapes of a shard, read as stored (F32/BF16/F16)
engine.py     LlamaShard: forward pass with a GQA KV cache (Cython/C in cmlp._llama)
synthetic.py  seeded random models in the published layout (`cmlp model init --arch llama`)
NOTES.md      reference notes
"""

from cmlp.model.llama.config import LlamaConfig, load_config
from cmlp.model.llama.engine import LlamaShard

FAMILY = "llama"


def load_shard(model_dir, layer_start: int, layer_end: int, *, threads=None, max_seq_len=None):
    return LlamaShard.load(
        model_dir, layer_start, layer_end, threads=threads, max_seq_len=max_seq_len, family=FAMILY
    )


__all__ = ["FAMILY", "LlamaConfig", "LlamaShard", "load_config", "load_shard"]
