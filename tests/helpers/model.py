"""Shared helpers for the GPT-2 engine tests and scripts/make_golden.py.

Parity models are small (vocab 512) so the golden files stay tiny, with
weights scaled up (std 0.1, LayerNorm weights 1 + N(0, 0.2), biases
N(0, 0.1)) so activations are not degenerate and greedy ids vary: at HF's
init scale greedy decoding repeats one token forever, which a wrong
implementation can also do.

The reference is Hugging Face ``GPT2LMHeadModel`` in float32 on the same
files (``hf_reference``); it needs torch + transformers, the rest does not.
"""

from __future__ import annotations

import inspect
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmlp.model import Gpt2Config, Gpt2Shard
from cmlp.model.synthetic import write_model

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
ATOL = 1e-4  # max abs logit / hidden-state difference against transformers


@dataclass(frozen=True)
class ParitySpec:
    """A synthetic test model and the reference cases computed on it."""

    name: str
    config: Gpt2Config
    seed: int
    prefill_lengths: tuple[int, ...]
    decode_steps: int
    greedy_tokens: int
    cut_decode_steps: int = 3  # decode steps checked at every cut
    batch_shape: tuple[int, int] = (3, 7)
    write_kwargs: dict = field(default_factory=lambda: dict(std=0.1, ln_std=0.2, bias_std=0.1))

    def write(self, out_dir, prefix: str = "") -> Path:
        return write_model(out_dir, self.config, seed=self.seed, prefix=prefix, **self.write_kwargs)

    def inputs(self) -> dict[str, np.ndarray]:
        """Token ids of every case, drawn from a seeded RNG (stored in the golden)."""
        rng = np.random.default_rng(self.seed + 1)
        V = self.config.vocab_size
        ids = {f"prefill_T{T}_ids": rng.integers(0, V, (1, T)) for T in self.prefill_lengths}
        ids["batch_ids"] = rng.integers(0, V, self.batch_shape)
        ids["decode_prompt"] = rng.integers(0, V, (1, 5))
        ids["decode_ids"] = rng.integers(0, V, (self.decode_steps,))
        ids["greedy_prompt"] = rng.integers(0, V, (1, 5))
        return {k: v.astype(np.uint32) for k, v in ids.items()}


PARITY = ParitySpec(
    name="parity",
    config=Gpt2Config(vocab_size=512, n_positions=512, n_embd=64, n_layer=4, n_head=4),
    seed=1234,
    prefill_lengths=(1, 5, 64, 300),
    decode_steps=50,
    greedy_tokens=100,
)

# a non-default shape: head_dim 32, odd layer count
WIDE = ParitySpec(
    name="wide",
    config=Gpt2Config(vocab_size=512, n_positions=128, n_embd=192, n_layer=5, n_head=6),
    seed=99,
    prefill_lengths=(5, 33),
    decode_steps=20,
    greedy_tokens=30,
)

SPECS = {spec.name: spec for spec in (PARITY, WIDE)}


def layer_partitions(n_layer: int, max_shards: int = 4):
    """Every way to cut [0, n_layer) into 1..max_shards contiguous shards."""
    cuts = range(1, n_layer)
    for mask in range(1 << (n_layer - 1)):
        chosen = [c for i, c in enumerate(cuts) if mask >> i & 1]
        if len(chosen) + 1 <= max_shards:
            bounds = [0, *chosen, n_layer]
            yield list(itertools.pairwise(bounds))


class ShardedModel:
    """Shards chained like pipeline stages; records the hidden state at each cut."""

    def __init__(self, model_dir, ranges, threads: int = 2):
        self.shards = [Gpt2Shard.load(model_dir, a, b, threads=threads) for a, b in ranges]
        self.cut_hidden: dict[int, np.ndarray] = {}

    def forward(self, ids) -> np.ndarray:
        x = ids
        for shard in self.shards:
            x = shard.forward(x)
            if not shard.is_last:
                self.cut_hidden[shard.layer_end] = x.copy()
        return x.copy()

    def clear_cache(self) -> None:
        for shard in self.shards:
            shard.clear_cache()


# ---------------------------------------------------------------------------
# Reference computation with transformers (torch required)
# ---------------------------------------------------------------------------


def load_hf_model(model_dir):
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.eval()


class HfSession:
    """One sequence through HF GPT2LMHeadModel with its KV cache."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, ids: np.ndarray):
        """-> (last-position logits [B, V], hidden states tuple of [B, T, C])."""
        import torch

        with torch.no_grad():
            out = self.model(
                torch.from_numpy(ids.astype(np.int64)),
                use_cache=True,
                output_hidden_states=True,
                **{self._cache_arg: self.cache},
            )
        hidden = tuple(h.numpy().copy() for h in out.hidden_states)
        return out.logits[:, -1].numpy().copy(), hidden


def hf_reference(model_dir, spec: ParitySpec) -> dict[str, np.ndarray]:
    """Every golden array of ``spec``: inputs plus the transformers outputs."""
    model = load_hf_model(model_dir)
    inputs = spec.inputs()
    ref = dict(inputs)
    n_layer = spec.config.n_layer
    for T in spec.prefill_lengths:
        logits, _ = HfSession(model).forward(inputs[f"prefill_T{T}_ids"])
        ref[f"prefill_T{T}_logits"] = logits
    ref["batch_logits"], _ = HfSession(model).forward(inputs["batch_ids"])

    # 50 cached decode steps (fed ids), with the hidden state at every cut
    session = HfSession(model)
    logits, hidden = session.forward(inputs["decode_prompt"])
    ref["decode_prompt_logits"] = logits
    cut_prefill = [hidden[c] for c in range(1, n_layer)]
    step_logits, cut_decode = [], []
    for i, token in enumerate(inputs["decode_ids"]):
        logits, hidden = session.forward(np.array([[token]], np.uint32))
        step_logits.append(logits[0])
        if i < spec.cut_decode_steps:
            cut_decode.append([hidden[c] for c in range(1, n_layer)])
    ref["decode_logits"] = np.stack(step_logits)
    ref["cut_hidden_prefill"] = np.stack(cut_prefill)  # [cuts, 1, 5, C]
    ref["cut_hidden_decode"] = np.array(cut_decode)  # [steps, cuts, 1, 1, C]

    # greedy decoding; the smallest top-1/top-2 gap shows how safe the ids are
    session = HfSession(model)
    logits, _ = session.forward(inputs["greedy_prompt"])
    greedy, margins = [], []
    for _ in range(spec.greedy_tokens):
        top2 = np.sort(logits[0])[-2:]
        margins.append(top2[1] - top2[0])
        token = int(np.argmax(logits[0]))
        greedy.append(token)
        logits, _ = session.forward(np.array([[token]], np.uint32))
    ref["greedy_ids"] = np.array(greedy, np.uint32)
    ref["greedy_min_margin"] = np.float32(min(margins))
    return {k: np.asarray(v) for k, v in ref.items()}


# ---------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------


def golden_paths(spec: ParitySpec) -> tuple[Path, Path]:
    return GOLDEN_DIR / f"gpt2_{spec.name}.npz", GOLDEN_DIR / f"gpt2_{spec.name}.json"


def model_digest(model_dir) -> str:
    """The weights hash write_model recorded in config.json."""
    return json.loads((Path(model_dir) / "config.json").read_text())["cmlp_weights_sha256"]


def load_golden(spec: ParitySpec, model_dir) -> dict[str, np.ndarray]:
    """Golden arrays, after checking the regenerated weights are the golden's."""
    npz_path, meta_path = golden_paths(spec)
    meta = json.loads(meta_path.read_text())
    digest = model_digest(model_dir)
    if digest != meta["weights_sha256"]:
        raise AssertionError(
            f"RNG drift: numpy {np.__version__} regenerates different weights for the "
            f"'{spec.name}' model (sha256 {digest[:16]}...) than the golden files were made "
            f"from (numpy {meta['numpy']}, sha256 {meta['weights_sha256'][:16]}...). "
            "Regenerate them with scripts/make_golden.py."
        )
    with np.load(npz_path) as data:
        return {k: data[k] for k in data.files}


def golden_metadata(spec: ParitySpec, model_dir, ref: dict[str, np.ndarray]) -> dict:
    import torch
    import transformers

    cfg = spec.config
    return {
        "model": spec.name,
        "config": {
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_positions,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
        },
        "seed": spec.seed,
        "write_kwargs": spec.write_kwargs,
        "weights_sha256": model_digest(model_dir),
        "greedy_min_margin": float(ref["greedy_min_margin"]),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "reference": "transformers GPT2LMHeadModel, float32, CPU, DynamicCache",
    }
