"""GPT-2 model files and the shard engine.

    config.py     Gpt2Config and load_config (config.json)
    weights.py    shard tensor loading from model.safetensors, weight hashes
    engine.py     Gpt2Shard: forward pass with KV cache (Cython/C in cmlp._gpt2)
    synthetic.py  seeded random model directories (`cmlp model init`, tests)
"""

from cmlp.model.config import Gpt2Config, load_config
from cmlp.model.engine import Gpt2Shard

__all__ = ["Gpt2Config", "Gpt2Shard", "load_config"]
