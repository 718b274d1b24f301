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


__all__ = ["FAMILY", "Gpt2Config", "Gpt2Shard", "load_config", "load_shard"]
