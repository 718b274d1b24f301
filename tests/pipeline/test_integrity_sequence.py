"""Strict record-layer sequence numbers on every pipeline link (issue 10, attack 1).

A hostile host drops, duplicates or reorders exactly one sealed frame on one
link.  Before the fix the first frame could carry any sequence and gaps were
allowed, so a dropped frame (the 40-byte cache-clear sentinel) went unnoticed.
Now every such attack must end in a typed error on the receiving side, never in
a silent success, and the same persistent stages must serve a clean pipeline
afterwards.
"""

import time

import numpy as np
import pytest

from cmlp import errors
from cmlp.transport.sockets import TcpAddr
from cmlp.transport.wire import Tensor
from tests.helpers import mitm
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator
from tests.pipeline.test_hostile_network import cfg, with_endpoint

# frame index per direction: 0 = msg 1 (or 2), 1 = msg 3 (initiator side only), then sealed
FIRST_SEALED = {"up": 2, "down": 1}
ATTACKS = {
    "drop": lambda i: mitm.drop(i),
    "duplicate": lambda i: mitm.replay(i),
    "reorder": lambda i: mitm.swap(i),
}
# which side receives the tampered direction, and its stage index (None: the orchestrator)
LINKS = {
    # link: (direction attacked, index of the victim stage or None for the orchestrator)
    "control-down": ("up", 0),  # orchestrator -> stage 0 control (Init, StartRequest...)
    "control-up": ("down", None),  # stage 0 -> orchestrator control (Ready, Pong, Done...)
    "orch-data-in": ("up", 0),  # orchestrator -> stage 0 data_in (tensors, END)
    "direct": ("up", 1),  # stage 0 -> stage 1, straight
    "relayed": ("up", 1),  # stage 0 -> host relay -> stage 1
    "orch-data-out": ("up", None),  # last stage -> orchestrator (logits, END)
}


class Link:
    """Two persistent identity stages; one link goes through a MITM proxy."""

    def __init__(self, link, tamper):
        direction, _ = LINKS[link]
        self.real = make_manifest(2, relay=(link == "relayed"))
        s = self.real.stages
        target = {
            "control-down": s[0].endpoint.control.endpoint,
            "control-up": s[0].endpoint.control.endpoint,
            "orch-data-in": s[0].endpoint.data_in.endpoint,
            "direct": s[1].endpoint.data_in.endpoint,
            "relayed": s[1].endpoint.data_in.endpoint,
            "orch-data-out": s[1].endpoint.data_out.endpoint,
        }[link]
        kw = {"tamper_up": tamper} if direction == "up" else {"tamper_down": tamper}
        self.proxy = mitm.MitmProxy(
            (target.host, target.port),
            kw.get("tamper_up", mitm.passthrough),
            kw.get("tamper_down", mitm.passthrough),
        )
        view, targets = self.real, [None, None]
        if link.startswith("control"):
            view = with_endpoint(self.real, 0, "control", self.proxy.endpoint)
        elif link == "orch-data-in":
            view = with_endpoint(self.real, 0, "data_in", self.proxy.endpoint)
        elif link == "direct":
            targets[0] = TcpAddr(*self.proxy.addr)
        elif link == "relayed":
            view = with_endpoint(self.real, 1, "data_in", self.proxy.endpoint)
        else:
            targets[1] = TcpAddr(*self.proxy.addr)
        self.view = view
        self.stages = [
            StageThread(
                self.real, i, IdentityExecutor(), persistent=True, data_out_target=targets[i], session=cfg()
            )
            for i in range(2)
        ]

    def orchestrator(self, manifest=None):
        return orchestrator(
            manifest or self.view, session=cfg(), infer_timeout=5, data_setup_timeout=5, init_timeout=5
        )

    def close(self):
        self.proxy.close()
        for st in self.stages:
            st.stop()


def run_requests(link, n=3):
    """Start, run ``n`` two-tensor requests, shut down: the outputs, or the error."""
    orch = link.orchestrator()
    outputs = []
    try:
        orch.start()
        for i in range(n):
            a = Tensor.from_array("a", np.full((1, 4), i, np.float32))
            b = Tensor.from_array("b", np.full((1, 4), -i, np.float32))
            r = orch.infer([[a, b]], seq_len=1)
            outputs.append([(t.name, t.data.tolist()) for t in r.outputs[0]])
        orch.shutdown()
        return outputs
    except errors.CmlpError as exc:
        return exc
    finally:
        orch.close()


def expected_outputs(n=3):
    return [[("a", [[float(i)] * 4]), ("b", [[float(-i)] * 4])] for i in range(n)]


# fast tier: one case per link, every attack and both offsets; a dropped or held control
# message waits out a deadline (slow)
@pytest.mark.fast_cases(
    "0-duplicate-control-down",
    "3-duplicate-control-up",
    "0-drop-orch-data-in",
    "3-reorder-direct",
    "3-drop-relayed",
    "0-reorder-orch-data-out",
)
@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("offset", [0, 3])
def test_single_frame_attack_is_a_typed_error(link, attack, offset):
    """``offset`` 0: the first sealed frame of the direction; 3: one in mid-stream."""
    direction, victim = LINKS[link]
    setup = Link(link, ATTACKS[attack](FIRST_SEALED[direction] + offset))
    try:
        t0 = time.monotonic()
        result = run_requests(setup)
        assert isinstance(result, errors.CmlpError), f"{link}/{attack}: silent success: {result!r}"
        assert time.monotonic() - t0 < 20
        if (
            link.startswith("control")
            and attack != "duplicate"
            and isinstance(result, errors.PipelineTimeout)
        ):
            # request/response: nothing follows a held control message until it is
            # answered, so the receiver cannot see the gap; the sender's deadline fires
            pass
        elif victim is not None:
            st = setup.stages[victim]
            assert mitm.wait_until(lambda: isinstance(st.worker.last_error, errors.SequenceError), 5), (
                f"{link}/{attack}: victim stage {victim} saw {st.worker.last_error!r}"
            )
        else:
            cause = result
            while cause is not None and not isinstance(cause, errors.SequenceError):
                cause = cause.__cause__
            assert cause is not None or "sequence" in str(result), (
                f"{link}/{attack}: orchestrator error does not name the sequence: {result!r}"
            )
        # the same stages serve an untampered pipeline afterwards, with exact outputs
        setup.proxy.upstream = setup.proxy.downstream = mitm.passthrough
        deadline = time.monotonic() + 15
        while True:
            clean = run_requests(setup)
            if not isinstance(clean, errors.CmlpError) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert clean == expected_outputs()
    finally:
        setup.close()


@pytest.mark.slow  # every fast attack case above also checks exact outputs through its proxy afterwards
def test_untampered_links_give_exact_outputs():
    for link in LINKS:
        setup = Link(link, mitm.passthrough)
        try:
            assert run_requests(setup) == expected_outputs(), link
        finally:
            setup.close()
