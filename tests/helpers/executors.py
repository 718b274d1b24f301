"""Test executors (no model): protocol, fault and relay tests drive stages with these.

Run as a script, this is ``cmlp-stage`` with one of them instead of GPT-2:
    python tests/helpers/executors.py identity|double <cmlp-stage arguments>
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cmlp.errors import ForwardFailed
from cmlp.transport.wire import Tensor


class IdentityExecutor:
    """Passes tensors through unchanged (protocol tests, relay benchmarks)."""

    def __init__(self, hashes=(), delay: float = 0.0):
        self.hashes = list(hashes)
        self.delay = delay
        self.spec = None

    def init(self, spec, activation, num_stages) -> None:
        self.spec = spec

    def weight_hashes(self):
        return list(self.hashes)

    def forward(self, request_id, micro_batch, inputs):
        if self.delay:
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


BY_NAME = {"identity": IdentityExecutor, "double": DoubleExecutor}


def main(argv) -> int:
    from cmlp.cli import stage

    if not argv or argv[0] not in BY_NAME:
        print(f"usage: {sys.argv[0]} {{{'|'.join(BY_NAME)}}} <cmlp-stage arguments>", file=sys.stderr)
        return 2
    cls = BY_NAME[argv[0]]
    return stage.main(argv[1:], make_executor=lambda args, manifest: cls())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
