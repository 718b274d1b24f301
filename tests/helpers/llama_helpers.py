"""Random llama/qwen2 models built by transformers itself, and our shards chained like stages.

Weights are HF's init with std 0.1 instead of 0.02, norm weights 1 + N(0, 0.2)
and biases N(0, 0.1): at HF's own scale greedy decoding repeats one token,
which a wrong implementation can also do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmlp.model.registry import load_shard
from cmlp.pipeline.gpt2 import f32_to_bf16_bits, greedy_token


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "llama" | "qwen2"
    kwargs: dict = field(default_factory=dict)
    seed: int = 0

    def hf_config(self):
        from transformers import LlamaConfig, Qwen2Config

        base = dict(
            vocab_size=301,
            hidden_size=96,
            intermediate_size=200,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.1,
            tie_word_embeddings=False,
        )
        base.update(self.kwargs)
        return (LlamaConfig if self.family == "llama" else Qwen2Config)(**base)


def build_hf_model(case: Case):
    """transformers' own random model (float32, eval mode)."""
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    torch.manual_seed(case.seed)
    cls = LlamaForCausalLM if case.family == "llama" else Qwen2ForCausalLM
    model = cls(case.hf_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model


def save(model, out_dir, dtype=None, max_shard_size=None):
    import torch

    if dtype is not None:
        model = model.to({"bf16": torch.bfloat16, "f16": torch.float16}[dtype])
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out_dir), **kwargs)
    return out_dir


def hf_logits(model, ids) -> np.ndarray:
    """Logits [T, V] of one sequence, float32, full forward (no cache)."""
    import torch

    with torch.no_grad():
        return model(torch.as_tensor([list(ids)], dtype=torch.long)).logits[0].float().numpy()


class Chain:
    """Our shards chained like pipeline stages; hidden states cross as the wire would."""

    def __init__(self, model_dir, ranges, threads=2, wire="F32", max_seq_len=None):
        self.shards = [
            load_shard(model_dir, a, b, threads=threads, max_seq_len=max_seq_len) for a, b in ranges
        ]
        self.wire = wire

    def forward(self, ids) -> np.ndarray:
        x = np.asarray(ids, np.uint32)
        for shard in self.shards:
            x = shard.forward(x)
            if not shard.is_last and self.wire == "BF16":
                x = f32_to_bf16_bits(x)
        return x.copy()

    def clear_cache(self):
        for s in self.shards:
            s.clear_cache()

    def greedy(self, prompt, n):
        """n greedy ids and the logits [n, V] that chose them (prefill, then decode)."""
        self.clear_cache()
        logits = [self.forward([list(prompt)])[0]]
        ids = []
        for _ in range(n):
            ids.append(greedy_token(logits[-1]))
            if len(ids) < n:
                logits.append(self.forward([[ids[-1]]])[0])
        return ids, np.stack(logits)
