"""Drive a running ``cmlp serve`` with N concurrent clients (``cmlp bench serve``).

Each client runs one generation of ``max_tokens`` from a prompt of
``prompt_tokens`` seeded random ids; the table has aggregate tokens/s over the
wall time of the round, per-request TTFT (request sent -> first token) and
inter-token latency percentiles (counts and timings only).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from cmlp.client import Client, Finished, SamplingParams, TokenEvent


@dataclass
class RoundResult:
    clients: int
    wall_s: float = 0.0
    tokens: float = 0  # a count; merge() stores the median rate here (wall_s 1)
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def prompt_ids(n: int, seed: int, vocab: int = 50000) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256, vocab) for _ in range(n)]


def run_round(
    client: Client, clients: int, prompt_tokens: int, max_tokens: int, seed: int = 0, vocab: int = 50000
) -> RoundResult:
    """One round: ``clients`` generations started together."""
    res = RoundResult(clients)
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        ids = prompt_ids(prompt_tokens, seed * 1000 + i, vocab)
        params = SamplingParams(max_tokens=max_tokens)
        gate.wait()
        t0 = time.monotonic()
        last: float | None = None
        ttft, itl, n = None, [], 0
        try:
            for ev in client.generate(ids, params):
                now = time.monotonic()
                if isinstance(ev, TokenEvent):
                    if last is None:
                        ttft = now - t0
                    else:
                        itl.append(now - last)
                    last = now
                    n += 1
                elif isinstance(ev, Finished):
                    break
        except Exception as exc:  # noqa: BLE001 - counted, reported by kind
            with lock:
                res.errors.append(type(exc).__name__)
            return
        with lock:
            res.tokens += n
            if ttft is not None:
                res.ttft_s.append(ttft)
            res.itl_s.extend(itl)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    res.wall_s = time.monotonic() - t0
    return res


HEADER = (
    f"{'clients':>7} {'tok/s':>8} {'tok/s/stream':>12} {'TTFT p50 ms':>11} "
    f"{'TTFT p95 ms':>11} {'ITL p50 ms':>10} {'ITL p95 ms':>10} {'errors':>6}"
)


def row(res: RoundResult) -> str:
    return (
        f"{res.clients:>7} {res.tokens_per_s:>8.1f} {res.tokens_per_s / res.clients:>12.1f} "
        f"{_pct(res.ttft_s, 0.5) * 1e3:>11.1f} {_pct(res.ttft_s, 0.95) * 1e3:>11.1f} "
        f"{_pct(res.itl_s, 0.5) * 1e3:>10.2f} {_pct(res.itl_s, 0.95) * 1e3:>10.2f} "
        f"{len(res.errors):>6}"
    )


def merge(rounds: list[RoundResult]) -> RoundResult:
    """Medians of tokens/s over rounds (as one synthetic result); latencies pooled."""
    out = RoundResult(rounds[0].clients)
    med = statistics.median(r.tokens_per_s for r in rounds)
    out.wall_s, out.tokens = 1.0, med
    for r in rounds:
        out.ttft_s += r.ttft_s
        out.itl_s += r.itl_s
        out.errors += r.errors
    return out
