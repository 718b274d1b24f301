"""GPT-2 family (openai-community/gpt2 layout).

config.py     Gpt2Config and load_config (config.json)
weights.py    shard tensor loading from model.safetensors, weight hashes
engine.py     Gpt2Shard: forward pass with KV cache (Cython/C in cmlp._gpt2)
synthetic.py  seeded random model directories (`cmlp model init --arch gpt2`, tests)
NOTES.md      reference notes (what the math is, where it is checked)
"""

from cmlp.model.gpt2.config import Gpt2Config, load_config
from cmlp.model.gpt2.engine import Gpt2Shard

FAMILY = "gpt2"


def load_shard(model_dir, layer_start: int, layer_end: int, *, threads=None, max_seq_len=None):
    """Registry entry point (max_seq_len is bounded by n_positions; the cache is lazy)."""
    return Gpt2Shard.load(model_dir, layer_start, layer_end, threads=threads)


def model_facts(model_dir):
    from cmlp.model.base import ModelFacts

    cfg = load_config(model_dir)
    return ModelFacts(cfg.n_layer, cfg.n_embd, cfg.n_positions, Gpt2Shard.wire_dtype)


def shard_hashes(model_dir, layer_start: int, layer_end: int) -> list[str]:
    from cmlp.model.gpt2.weights import load_shard_weights

    weights = load_shard_weights(model_dir, load_config(model_dir), layer_start, layer_end)
    return [digest for _, digest in weights.hashes()]


__all__ = ["FAMILY", "Gpt2Config", "Gpt2Shard", "load_config", "load_shard", "model_facts", "shard_hashes"]
