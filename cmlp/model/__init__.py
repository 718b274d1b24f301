"""Model families and the registry that picks one from config.json.

    registry.py   family detection (model_type, architectures), load_shard, model_name check
    base.py       ShardEngine: the interface executors call
    safetensors_io.py  single-file and sharded HF checkpoints: checked tensor reads
    gpt2/         GPT-2 (cmlp._gpt2)
    llama/        Llama 3.x, SmolLM2, TinyLlama (cmlp._llama)
    qwen2/        Qwen2 / Qwen2.5: llama + QKV bias (cmlp._llama)
    presets.py    `cmlp model init` presets for every family

``Gpt2Config``, ``Gpt2Shard`` and ``load_config`` stay importable from here.
"""

from cmlp.model.gpt2 import Gpt2Config, Gpt2Shard, load_config

__all__ = ["Gpt2Config", "Gpt2Shard", "load_config"]
