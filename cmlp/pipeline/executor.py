"""What a stage runs: the executor interface (pipeline.md section 4).

The stage runtime owns the executor and calls nothing else on it; executors
never touch channels.  ``forward`` receives the micro-batch's tensors exactly
as they arrived and returns the tensors to send downstream.  The production
executor is cmlp.pipeline.gpt2.Gpt2Executor; test executors live in tests/.
"""

from __future__ import annotations

from typing import List, Protocol

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
