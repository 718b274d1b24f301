"""Generation parameters shared by the client and the enclaves (the client contract's types).

``SamplingParams`` is validated in both places: by the client before anything
is sent, and again by stage 0 on what arrives (the bytes crossed the host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from cmlp.errors import InvalidRequestError

MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 64
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1 << 20
SEED_MAX = (1 << 64) - 1
MAX_TOKENS_LIMIT = 1 << 20  # far above any context; only bounds the wire field
MAX_PROMPT_BYTES = 1 << 20  # text prompt, UTF-8
MAX_PROMPT_IDS = 1 << 16

FINISH_REASONS = ("length", "eos", "stop")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16  # >= 1
    temperature: float = 0.0  # 0.0 => greedy (ids identical to reference mode); valid 0..2
    top_k: int = 0  # 0 => off
    top_p: float = 1.0  # (0, 1]
    seed: Optional[int] = None  # same seed + same prompt => same ids
    stop: Tuple[str, ...] = ()  # at most 4, each 1..64 UTF-8 bytes; matched on the decoded text

    def validate(self) -> "SamplingParams":
        """Raise InvalidRequestError naming the first bad field; return self."""

        def bad(msg):
            raise InvalidRequestError(msg)

        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT
        ):
            bad(f"max_tokens must be an integer in [1, {MAX_TOKENS_LIMIT}], got {self.max_tokens!r}")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or not 0.0 <= self.temperature <= MAX_TEMPERATURE
        ):
            bad(f"temperature must be in [0, {MAX_TEMPERATURE}], got {self.temperature!r}")
        if (
            isinstance(self.top_k, bool)
            or not isinstance(self.top_k, int)
            or not 0 <= self.top_k <= MAX_TOP_K
        ):
            bad(f"top_k must be an integer in [0, {MAX_TOP_K}], got {self.top_k!r}")
        if (
            isinstance(self.top_p, bool)
            or not isinstance(self.top_p, (int, float))
            or not math.isfinite(self.top_p)
            or not 0.0 < self.top_p <= 1.0
        ):
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX
        ):
            bad(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_SEQUENCES:
            bad(f"stop must be a tuple of at most {MAX_STOP_SEQUENCES} strings")
        for s in self.stop:
            if not isinstance(s, str):
                bad(f"stop sequences must be strings, got {s!r}")
            try:
                n = len(s.encode("utf-8"))
            except UnicodeEncodeError:
                bad("stop sequences must be valid Unicode")
            if not 1 <= n <= MAX_STOP_BYTES:
                bad(f"each stop sequence must be 1..{MAX_STOP_BYTES} UTF-8 bytes, got {n}")
        return self

    def to_json(self) -> dict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": float(self.temperature),
            "top_k": self.top_k,
            "top_p": float(self.top_p),
            "seed": self.seed,
            "stop": list(self.stop),
        }

    @classmethod
    def from_json(cls, obj) -> "SamplingParams":
        """From a decoded JSON object (untrusted): exact keys, then ``validate``."""
        if not isinstance(obj, dict):
            raise InvalidRequestError("params must be a JSON object")
        keys = {"max_tokens", "temperature", "top_k", "top_p", "seed", "stop"}
        if set(obj) != keys:
            raise InvalidRequestError(f"params must have exactly the keys {sorted(keys)}")
        stop = obj["stop"]
        if not isinstance(stop, list):
            raise InvalidRequestError("stop must be a list")
        return cls(
            max_tokens=obj["max_tokens"],
            temperature=obj["temperature"],
            top_k=obj["top_k"],
            top_p=obj["top_p"],
            seed=obj["seed"],
            stop=tuple(stop),
        ).validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
