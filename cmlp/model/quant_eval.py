"""The quality cost of a quantized model: logit error and perplexity against
the unquantized model, teacher-forced over one fixed text.

Both models decode the same token ids one at a time (KV cache, as in
serving); at every position the next-token logits are compared (max and RMS
absolute error, relative to the reference logits' standard deviation, and
top-1 agreement) and the log-likelihood of the actual next token is summed
into a perplexity.  Used by tests/test_quant_quality.py (bounds) and
bench/bench_precision.py (numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A fixed English text (written for this file): the same ids every run.
FIXED_TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under "
    "water. Farmers moved their animals to the hill behind the church, where the ground was "
    "dry and the grass was still green. Nobody in the village could remember a flood this "
    "late in the year. The old miller said that his father had seen one like it, long ago, "
    "when the bridge was still made of wood and the road to the town was only a track. By "
    "noon the rain had stopped, the sky cleared, and children came out to watch the brown "
    "water carry branches past the school."
)


@dataclass(frozen=True)
class QualityReport:
    tokens: int
    max_abs_logit_err: float
    rms_logit_err: float
    ref_logit_std: float
    top1_agreement: float
    ppl_ref: float
    ppl_quant: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_quant / self.ppl_ref

    def line(self) -> str:
        return (
            f"{self.tokens} tokens: max |dlogit| {self.max_abs_logit_err:.4g}, "
            f"rms {self.rms_logit_err:.4g} (logit std {self.ref_logit_std:.4g}), "
            f"top-1 agreement {self.top1_agreement:.1%}, "
            f"ppl {self.ppl_ref:.4f} -> {self.ppl_quant:.4f} (x{self.ppl_ratio:.4f})"
        )


def fixed_ids(vocab_size: int, max_tokens: int = 128) -> np.ndarray:
    """FIXED_TEXT through the embedded GPT-2 tokenizer (ids folded into a
    smaller test vocabulary when needed)."""
    from cmlp.tokenizer import load_tokenizer

    ids = np.array(load_tokenizer().encode(FIXED_TEXT)[:max_tokens], dtype=np.int64)
    return (ids % vocab_size).astype(np.uint32)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max()
    return z - np.log(np.exp(z).sum())


def compare(ref_shard, quant_shard, ids: np.ndarray) -> QualityReport:
    """Teacher-force ``ids`` through two whole-model shards (layers 0..n)."""
    ref_shard.clear_cache()
    quant_shard.clear_cache()
    errs, ref_logits_all, agree = [], [], 0
    nll_ref = nll_quant = 0.0
    for t in range(len(ids) - 1):
        token = ids[t : t + 1].reshape(1, 1)
        a = ref_shard.forward(token)[0].astype(np.float64)
        b = quant_shard.forward(token)[0].astype(np.float64)
        errs.append(a - b)
        ref_logits_all.append(a)
        agree += int(a.argmax() == b.argmax())
        nll_ref -= _log_softmax(a)[ids[t + 1]]
        nll_quant -= _log_softmax(b)[ids[t + 1]]
    n = len(ids) - 1
    err = np.stack(errs)
    return QualityReport(
        tokens=n,
        max_abs_logit_err=float(np.abs(err).max()),
        rms_logit_err=float(np.sqrt((err**2).mean())),
        ref_logit_std=float(np.std(np.stack(ref_logits_all))),
        top1_agreement=agree / n,
        ppl_ref=float(np.exp(nll_ref / n)),
        ppl_quant=float(np.exp(nll_quant / n)),
    )
