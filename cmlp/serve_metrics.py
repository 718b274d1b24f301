"""Prometheus metrics for `cmlp serve`: counts and timings only, never content.

The host runs the pipeline but must learn nothing about what flows through it,
so these metrics carry no prompt, text, token id or user: only how many requests
and tokens, how long the first token and each following one took, how many
sequences are active or queued, and which stages are up.  Label values come
from small fixed sets, so a hostile caller cannot grow the registry.

Needs the optional extra ``pip install 'cmlp[metrics]'`` (prometheus_client).
Each ``ServeMetrics`` owns its own registry (no process-global state), and
``start_metrics_server`` serves it in the Prometheus text format at ``/metrics``.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from cmlp.transport.sockets import parse_tcp_addr

# Finish reasons the client contract defines; anything else is counted as "other".
FINISH_REASONS = ("length", "eos", "stop")
# Error kinds are short fixed phrases ("busy", "client gone", an exception class name).
# At most MAX_ERROR_KINDS distinct ones get their own label; the rest are "other".
MAX_ERROR_KINDS = 32
_ERROR_KIND = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]{0,63}\Z")

# Why these buckets: TTFT spans a prefill (tens of ms on a small model, seconds on a
# long prompt behind a queue); inter-token latency is one decode step plus the hops.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    """The hooks `cmlp serve` calls; each updates one Prometheus series."""

    def __init__(self, n_stages: int):
        if not isinstance(n_stages, int) or isinstance(n_stages, bool) or n_stages < 1:
            raise ValueError(f"n_stages must be a positive int, got {n_stages!r}")
        self.n_stages = n_stages
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._started = Counter("cmlp_requests_started", "Generation requests accepted", registry=r)
        self._finished = Counter(
            "cmlp_requests_finished",
            "Generation requests ended, by finish reason and error kind",
            ("finish_reason", "error"),
            registry=r,
        )
        self._tokens = Counter("cmlp_generated_tokens", "Tokens generated", registry=r)
        self._ttft = Histogram(
            "cmlp_time_to_first_token_seconds",
            "Time from request start to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "cmlp_inter_token_latency_seconds",
            "Time between two consecutive generated tokens of one request",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._active = Gauge("cmlp_active_sequences", "Sequences being generated now", registry=r)
        self._queue = Gauge("cmlp_queue_depth", "Requests waiting for a free slot", registry=r)
        self._stage_up = Gauge(
            "cmlp_stage_up", "1 if the stage is connected and healthy", ("stage",), registry=r
        )
        for i in range(n_stages):
            self._stage_up.labels(stage=str(i)).set(0)
        self._error_kinds: set[str] = set()
        self._lock = threading.Lock()

    def request_started(self) -> None:
        self._started.inc()

    def first_token(self, ttft_s: float) -> None:
        """Time to the first token (the token itself is counted by ``token``)."""
        self._ttft.observe(_seconds(ttft_s))

    def token(self, inter_token_s: float | None) -> None:
        """Every generated token; ``inter_token_s`` is None for a request's first one."""
        self._tokens.inc()
        if inter_token_s is not None:
            self._itl.observe(_seconds(inter_token_s))

    def request_finished(self, finish_reason: str | None, error: str | None = None) -> None:
        reason = (
            finish_reason
            if finish_reason in FINISH_REASONS
            else ("none" if finish_reason is None else "other")
        )
        self._finished.labels(finish_reason=reason, error=self._error_label(error)).inc()

    def set_active(self, n: int) -> None:
        self._active.set(_count(n))

    def set_queue_depth(self, n: int) -> None:
        self._queue.set(_count(n))

    def set_stage_up(self, stage_idx: int, up: bool) -> None:
        if not isinstance(stage_idx, int) or not 0 <= stage_idx < self.n_stages:
            raise ValueError(f"stage index {stage_idx!r} outside 0..{self.n_stages - 1}")
        self._stage_up.labels(stage=str(stage_idx)).set(1 if up else 0)

    def _error_label(self, error: str | None) -> str:
        if error is None:
            return ""
        if not isinstance(error, str) or not _ERROR_KIND.match(error):
            return "other"
        with self._lock:
            if error in self._error_kinds:
                return error
            if len(self._error_kinds) >= MAX_ERROR_KINDS:
                return "other"
            self._error_kinds.add(error)
            return error


def _seconds(value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # negative or NaN: a clock bug upstream, not a latency
        raise ValueError(f"a duration must be >= 0 seconds, got {value!r}")
    return value


def _count(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"a count must be a non-negative int, got {n!r}")
    return n


class MetricsServer:
    """The running /metrics endpoint; ``close()`` stops it and frees the port."""

    def __init__(self, httpd, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)
        self._httpd = None

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_metrics_server(addr: str, metrics: ServeMetrics) -> MetricsServer:
    """Serve ``metrics`` at ``http://ADDR/metrics`` ("HOST:PORT", port 0 = any free one)."""
    tcp = parse_tcp_addr(addr)
    httpd, thread = start_http_server(tcp.port, addr=tcp.host, registry=metrics.registry)
    return MetricsServer(httpd, thread)
