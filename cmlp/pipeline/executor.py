"""What a stage runs: the executor interface (pipeline.md section 4) and test executors.

The stage runtime owns the executor and calls nothing else on it; executors
never touch channels.  ``forward`` receives the micro-batch's tensors exactly
as they arrived and returns the tensors to send downstream.
"""

from __future__ import annotations

from typing import List, Protocol

import numpy as np

from cmlp.errors import ForwardFailed
from cmlp.manifest import ActivationSpec, StageSpec
from cmlp.transport.wire import Tensor


class Executor(Protocol):
    def init(self, spec: StageSpec, activation: ActivationSpec, num_stages: int) -> None:
        """Load what layers [layer_start, layer_end) need; raise InitFailed on failure."""

    def weight_hashes(self) -> List[str]:
        """Hex SHA-256 of what was loaded, in the manifest's order (empty: not supported)."""

    def forward(self, request_id: int, micro_batch: int, inputs: List[Tensor]) -> List[Tensor]:
        """One micro-batch; raise ForwardFailed on failure."""

    # Optional hooks (the stage calls them when present; stateful executors must have them):
    #   begin_session()                               a new orchestrator session: empty the
    #                                                 KV cache (wiped), whatever came before
    #   begin_request(request_id, seq_len, n_mb)      before the request's first forward, so
    #                                                 forward() can check its cache position
    #                                                 against seq_len (defence in depth)


class IdentityExecutor:
    """Passes tensors through unchanged (protocol tests, relay benchmarks)."""

    def __init__(self, hashes=(), delay: float = 0.0):
        self.hashes = list(hashes)
        self.delay = delay
        self.spec = None

    def init(self, spec, activation, num_stages) -> None:
        self.spec = spec

    def weight_hashes(self) -> List[str]:
        return list(self.hashes)

    def forward(self, request_id, micro_batch, inputs):
        if self.delay:
            import time
            time.sleep(self.delay)
        return [Tensor(t.name, t.dtype, t.shape, np.array(t.data)) for t in inputs]


class DoubleExecutor(IdentityExecutor):
    """Multiplies every data byte by 2 (wrapping), keeping name, dtype and shape."""

    def forward(self, request_id, micro_batch, inputs):
        out = []
        for t in inputs:
            raw = np.frombuffer(t.data.tobytes(), np.uint8) * np.uint8(2)
            out.append(Tensor(t.name, t.dtype, t.shape, raw.view(t.dtype.numpy).reshape(t.shape)))
        return out


class FailingExecutor(IdentityExecutor):
    """Always fails its forward pass (fault tests)."""

    def forward(self, request_id, micro_batch, inputs):
        raise ForwardFailed(request_id, micro_batch, "injected failure")
