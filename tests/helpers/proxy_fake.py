"""A fake of the host-blind client (the contract in cmlp/client.py), for the proxy's tests.

It implements the contract's behaviour, not a model: deterministic "greedy" ids from the
context, seeded sampling for temperature > 0, stop sequences matched on the decoded text
with the possible-prefix hold-back, EOS, the context limit, and cancellation by closing
the iterator.  Knobs inject what a real pipeline can do to the proxy: a failure after N
tokens, a per-token delay, an attestation mismatch.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from cmlp.errors import ContextTooLong, InvalidRequestError, PipelineUnavailable, ServerBusy
from cmlp.tokenizer import load_tokenizer

_TOKENIZER = load_tokenizer()
# Single-token words, so the fake's output reads like text and decodes token by token.
WORDS = [
    " the",
    " cat",
    " sat",
    " on",
    " a",
    " mat",
    ".",
    " and",
    " dog",
    " ran",
    ",",
    " home",
    " to",
    " big",
    " red",
    " sun",
    "\n",
    " it",
    " was",
    " good",
]
WORD_IDS = []
for _w in WORDS:
    (_id,) = _TOKENIZER.encode(_w)
    WORD_IDS.append(_id)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > 4 or any(not 1 <= len(s.encode()) <= 64 for s in self.stop):
            raise InvalidRequestError("at most 4 stop sequences of 1..64 bytes")


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    max_seq_len: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None


class FakeClient:
    """Contract-shaped client; see the module docstring for the knobs."""

    def __init__(
        self,
        *,
        model_name="gpt2-fake",
        max_seq_len=1024,
        chat_template=None,
        eos_after=None,
        fail_after=None,
        token_delay=0.0,
        verify_error=None,
        busy=False,
        expose_tokenizer=False,
    ):
        self.info = ModelInfo(model_name, max_seq_len, chat_template, "<|endoftext|>", "<|endoftext|>")
        self.eos_after = eos_after
        self.fail_after = fail_after
        self.token_delay = token_delay
        self.verify_error = verify_error
        self.busy = busy
        if expose_tokenizer:
            self.tokenizer = _TOKENIZER
        self.lock = threading.Lock()
        self.started = 0  # generations opened
        self.cancelled = 0  # generations closed before their Finished
        self.completed = 0
        self.active = 0
        self.max_active = 0
        self.prompts = []  # what reached the client (text or ids)
        self.closed = False

    # -- contract -------------------------------------------------------------
    def verify(self):
        if self.verify_error is not None:
            raise self.verify_error

    def model_info(self):
        return self.info

    def close(self):
        self.closed = True

    def generate(self, prompt, params: SamplingParams):
        ids = _TOKENIZER.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if len(ids) + params.max_tokens > self.info.max_seq_len:
            raise ContextTooLong(
                f"{len(ids)} prompt tokens + max_tokens {params.max_tokens} "
                f"exceeds the context of {self.info.max_seq_len}"
            )
        if self.busy:
            raise ServerBusy("no free slot")
        with self.lock:
            self.prompts.append(prompt)
        return self._events(ids, params)

    def _events(self, prompt_ids, params):
        with self.lock:
            self.started += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            yield from self._run(prompt_ids, params)
            finished = True
        finally:
            with self.lock:
                self.active -= 1
                if finished:
                    self.completed += 1
                else:
                    self.cancelled += 1

    def _run(self, prompt_ids, params):
        ctx = list(prompt_ids)
        if params.temperature > 0:
            rng = random.Random(f"{params.seed}:{prompt_ids}") if params.seed is not None else random.Random()
        held = ""  # decoded text not yet emitted (a possible stop-sequence prefix)
        n = 0
        while True:
            if self.fail_after is not None and n >= self.fail_after:
                raise PipelineUnavailable("stage 1 link broken (injected)")
            if self.token_delay:
                time.sleep(self.token_delay)
            n += 1
            if self.eos_after is not None and n > self.eos_after:
                yield TokenEvent(_TOKENIZER.eos_id, held)
                yield Finished("eos", len(prompt_ids), n)
                return
            if params.temperature == 0:
                tok = WORD_IDS[(sum(ctx[-3:]) * 31 + len(ctx)) % len(WORD_IDS)]
            else:
                tok = rng.choice(WORD_IDS)
            ctx.append(tok)
            held += _TOKENIZER.decode([tok])
            hits = [(held.find(s), s) for s in params.stop if s in held]
            if hits:
                cut = min(hits)[0]
                yield TokenEvent(tok, held[:cut])
                yield Finished("stop", len(prompt_ids), n)
                return
            if n == params.max_tokens:
                yield TokenEvent(tok, held)
                yield Finished("length", len(prompt_ids), n)
                return
            keep = _stop_prefix_len(held, params.stop)
            out, held = held[: len(held) - keep], held[len(held) - keep :]
            yield TokenEvent(tok, out)


def _stop_prefix_len(text: str, stops) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def fake_backend(**kw):
    from cmlp.proxy.backend import ClientBackend

    client = FakeClient(**kw)
    return ClientBackend(client, sampling_params=SamplingParams, finished=Finished)
