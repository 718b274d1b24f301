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


def model_facts(model_dir, family: str = FAMILY):
    """Layers, width, positions (capped as the engine caps them) and the wire dtype: BF16
    when the matrices are stored as bf16 (as LlamaShard chooses), else F32."""
    from cmlp.model.base import ModelFacts
    from cmlp.model.llama.engine import DEFAULT_MAX_POSITIONS
    from cmlp.model.safetensors_io import Checkpoint

    cfg = load_config(model_dir, family)
    stored = Checkpoint(model_dir).info("model.layers.0.self_attn.q_proj.weight").dtype
    return ModelFacts(
        cfg.num_hidden_layers,
        cfg.hidden_size,
        min(cfg.max_position_embeddings, DEFAULT_MAX_POSITIONS),
        "BF16" if stored == "BF16" else "F32",
    )


def shard_hashes(model_dir, layer_start: int, layer_end: int, family: str = FAMILY) -> list[str]:
    from cmlp.model.llama.weights import load_shard_weights

    weights = load_shard_weights(model_dir, load_config(model_dir, family), layer_start, layer_end)
    return [digest for _, digest in weights.hashes()]


__all__ = ["FAMILY", "LlamaConfig", "LlamaShard", "load_config", "load_shard", "model_facts", "shard_hashes"]
