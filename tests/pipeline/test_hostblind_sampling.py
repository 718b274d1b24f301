"""Sampling in the last stage: greedy rule, seeds, and the filters against transformers' warpers."""

import numpy as np
import pytest

from cmlp.errors import InvalidModelInput, InvalidRequestError
from cmlp.hostblind.params import SamplingParams
from cmlp.hostblind.sampling import Sampler, greedy_id, make_rng
from cmlp.pipeline.gpt2 import greedy_token

V = 512


def logits(seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(V) * scale).astype(np.float32)


def test_greedy_is_the_reference_rule_with_last_index_ties():
    x = logits()
    s = Sampler(V)
    assert s.sample(x, SamplingParams(), None) == greedy_token(x) == int(np.argmax(x))
    t = np.zeros(V, np.float32)
    t[[3, 100, 400]] = 5.0  # exact tie: the last index wins (Rust max_by)
    assert greedy_id(t) == greedy_token(t) == 400 == s.sample(t, SamplingParams(), None)


def test_greedy_fast_path_keeps_the_reversed_argmax_rule():
    """greedy_id scans forward (SIMD) but must pick exactly what argmax over the reversed
    view picks: last of the exact ties, last NaN when there is one, infinities included."""
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n = int(rng.integers(1, 40))
        x = rng.integers(-3, 3, n).astype(np.float32)  # a small range: ties are common
        for value, p in ((np.nan, 0.15), (np.inf, 0.15), (-np.inf, 0.15)):
            if rng.random() < p:
                x[rng.integers(0, n)] = value
        if rng.random() < 0.05:
            x[:] = -np.inf
        for v in (x, x[::-1], x[::2]):
            assert greedy_id(v) == int(v.shape[0] - 1 - np.argmax(v[::-1]))
    t = np.zeros(V, np.float32)
    t[[7, 9]] = np.nan
    assert greedy_id(t) == greedy_token(t) == 9


def draws(params, x, n, seed=1):
    s, rng = Sampler(V), make_rng(seed)
    return [s.sample(x, params, rng) for _ in range(n)]


def test_same_seed_same_ids_other_seed_other_ids():
    x = logits(scale=1.0)
    p = SamplingParams(temperature=1.0, seed=7)
    assert draws(p, x, 50, 7) == draws(p, x, 50, 7)
    assert draws(p, x, 50, 7) != draws(p, x, 50, 8)


def hf_kept(x, temperature, top_k, top_p):
    """The token set transformers' warpers keep, and their probabilities."""
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    t = torch.tensor(x[None, :], dtype=torch.float64)
    ids = torch.zeros((1, 1), dtype=torch.long)
    t = TemperatureLogitsWarper(temperature)(ids, t)
    if top_k:
        t = TopKLogitsWarper(top_k)(ids, t)
    if top_p < 1.0:
        t = TopPLogitsWarper(top_p)(ids, t)
    p = torch.softmax(t, dim=-1)[0].numpy()
    return p


# fast tier: no filter, then temperature, top-k and top-p together
@pytest.mark.fast_cases("1.0-0-1.0", "0.5-5-0.5")
@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.8), (1.0, 50, 0.9), (0.5, 5, 0.5)]
)
def test_filters_and_distribution_match_transformers(temperature, top_k, top_p):
    x = logits(seed=3, scale=1.5)
    want = hf_kept(x, temperature, top_k, top_p)
    n = 20000
    got = (
        np.bincount(
            draws(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p), x, n), minlength=V
        )
        / n
    )
    assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want))  # never outside HF's set
    kept = np.flatnonzero(want > 0.01)
    # frequencies within 5 standard errors of transformers' probabilities
    se = np.sqrt(want[kept] * (1 - want[kept]) / n)
    assert np.all(np.abs(got[kept] - want[kept]) < 5 * se + 1e-3)


def test_top_k_one_is_argmax_and_tiny_top_p_is_argmax():
    x = logits(seed=4)
    assert set(draws(SamplingParams(temperature=1.0, top_k=1), x, 200)) == {int(np.argmax(x))}
    assert set(draws(SamplingParams(temperature=1.0, top_p=1e-6), x, 200)) == {int(np.argmax(x))}


def test_bad_logits_are_refused():
    s = Sampler(V)
    with pytest.raises(InvalidModelInput):
        s.sample(np.zeros(V + 1, np.float32), SamplingParams(temperature=1.0), make_rng(0))
    bad = logits()
    bad[5] = np.nan
    with pytest.raises(InvalidModelInput):
        s.sample(bad, SamplingParams(temperature=1.0), make_rng(0))


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_tokens=0),
        dict(max_tokens=True),
        dict(temperature=2.5),
        dict(temperature=float("nan")),
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(seed=-1),
        dict(seed=2**64),
        dict(stop=("a",) * 5),
        dict(stop=("",)),
        dict(stop=("x" * 65,)),
        dict(stop=["a"]),
        dict(stop=(1,)),
    ],
)
def test_bad_params_are_invalid_requests(kw):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kw).validate()


def test_params_json_round_trip_and_strict_keys():
    p = SamplingParams(max_tokens=5, temperature=0.5, top_k=3, top_p=0.9, seed=2**64 - 1, stop=("\n", "é"))
    assert SamplingParams.from_json(p.to_json()) == p
    doc = p.to_json()
    doc["extra"] = 1
    with pytest.raises(InvalidRequestError):
        SamplingParams.from_json(doc)
