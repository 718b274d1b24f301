"""Qwen2 family: Qwen2 / Qwen2.5 (Qwen2ForCausalLM layout).

The llama math plus biases on q_proj, k_proj and v_proj (none on o_proj), so
it shares the llama package's config, weights and cmlp._llama kernels; what
differs is stated in cmlp.model.llama.config (``family == "qwen2"``) and
weights.layer_shapes.  Sliding-window attention (use_sliding_window) is refused.
"""

from cmlp.model import llama
from cmlp.model.llama.engine import LlamaShard

FAMILY = "qwen2"


def load_shard(model_dir, layer_start: int, layer_end: int, *, threads=None, max_seq_len=None):
    return LlamaShard.load(
        model_dir, layer_start, layer_end, threads=threads, max_seq_len=max_seq_len, family=FAMILY
    )


def model_facts(model_dir):
    return llama.model_facts(model_dir, FAMILY)


def shard_hashes(model_dir, layer_start: int, layer_end: int) -> list[str]:
    return llama.shard_hashes(model_dir, layer_start, layer_end, FAMILY)


__all__ = ["FAMILY", "load_shard", "model_facts", "shard_hashes"]
