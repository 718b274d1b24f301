"""A hostile host between the pipeline's processes (issue: hardening, item 2).

A man-in-the-middle proxy sits on the orchestrator's control channel to
stage 0, on the data channel from stage 0 to stage 1, or between the host
relay and stage 1.  For every attack the victim must fail with a typed error
within the configured timeout, nothing may hang or crash, no plaintext may
appear on the wire, and the same (persistent) stages must serve a clean
pipeline afterwards.
"""

import json
import time

import numpy as np
import pytest

from cmlp import errors
from cmlp.attestation import MockProvider
from cmlp.manifest import Manifest
from cmlp.transport import SessionConfig
from cmlp.transport.sockets import TcpAddr
from cmlp.transport.wire import Tensor
from tests.helpers import mitm
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator

HS_TIMEOUT = 1.0
SECRET = "TOP-SECRET activations"


def cfg():
    return SessionConfig.development(handshake_timeout=HS_TIMEOUT)


def with_endpoint(manifest, stage, field, addr):
    doc = json.loads(manifest.dumps())
    doc["stages"][stage]["endpoint"][field] = {"type": "tcp", "addr": addr}
    return Manifest.from_json(json.dumps(doc))


class Setup:
    """Two persistent stages; the attacked link goes through a MITM proxy."""

    def __init__(self, where, tamper_up=mitm.passthrough, tamper_down=mitm.passthrough):
        relay = where == "relay"
        self.real = make_manifest(2, relay=relay)
        s = self.real.stages
        target = {
            "control": s[0].endpoint.control.endpoint,
            "data": s[1].endpoint.data_in.endpoint,
            "relay": s[1].endpoint.data_in.endpoint,
        }[where]
        self.proxy = mitm.MitmProxy((target.host, target.port), tamper_up, tamper_down, record=True)
        orch_view, data_out_target = self.real, None
        if where == "control":
            orch_view = with_endpoint(self.real, 0, "control", self.proxy.endpoint)
        elif where == "data":
            data_out_target = TcpAddr(*self.proxy.addr)
        else:  # the relay connects to what the orchestrator's manifest says stage 1 listens on
            orch_view = with_endpoint(self.real, 1, "data_in", self.proxy.endpoint)
        self.orch_view = orch_view
        self.stages = [
            StageThread(
                self.real,
                0,
                IdentityExecutor(),
                persistent=True,
                data_out_target=data_out_target,
                session=cfg(),
            ),
            StageThread(self.real, 1, IdentityExecutor(), persistent=True, session=cfg()),
        ]

    def orchestrator(self, manifest=None, **kw):
        kw.setdefault("session", cfg())
        kw.setdefault("infer_timeout", 5)
        kw.setdefault("data_setup_timeout", 5)
        kw.setdefault("init_timeout", 5)
        return orchestrator(manifest or self.orch_view, **kw)

    def close(self):
        self.proxy.close()
        for st in self.stages:
            st.stop()


def run_once(setup):
    """Start a pipeline through the proxy and run two requests; returns the error or None."""
    orch = setup.orchestrator()
    try:
        orch.start()
        for _ in range(2):
            x = Tensor.from_array(
                "hidden_states", np.frombuffer((SECRET * 8).encode()[:96], np.float32).reshape(1, 24)
            )
            orch.infer([[x]], seq_len=1)
        orch.shutdown()
        return None
    except errors.CmlpError as exc:
        return exc
    finally:
        orch.close()


def reinit_clean(setup):
    """The same stages serve a fresh, untampered pipeline afterwards."""
    deadline = time.monotonic() + 15
    while True:
        orch = setup.orchestrator(setup.real)
        try:
            orch.start()
            r = orch.infer([[Tensor.from_array("ok", np.ones((1, 4), np.float32))]], seq_len=1)
            assert r.outputs[0][0].name == "ok"
            orch.shutdown()
            return
        except errors.CmlpError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the stages may still be tearing the broken session down
        finally:
            orch.close()


# frame index 0 = msg 1 or 2, 1 = msg 3 (upstream only), then sealed frames
ATTACKS = {
    "flip-hello": (lambda: mitm.flip_bit(0, 40), "up"),
    "flip-sealed-up": (lambda: mitm.flip_bit(2, 20), "up"),
    "flip-type": (lambda: mitm.flip_bit(2, 3), "up"),
    "flip-flags": (lambda: mitm.flip_bit(2, 4, 1), "up"),
    "flip-sequence": (lambda: mitm.flip_bit(2, 8), "up"),
    "flip-tag": (lambda: mitm.flip_bit(2, -1), "up"),
    "flip-hello-down": (lambda: mitm.flip_bit(0, 40), "down"),
    "replay": (lambda: mitm.replay(2), "up"),
    "swap": (lambda: mitm.swap(2), "up"),
    "truncate-close": (lambda: mitm.truncate_and_close(2), "up"),
    "oversized-length": (lambda: mitm.inject_before(2, mitm.oversized_header()), "up"),
    "garbage-first": (lambda: mitm.inject_before(0, b"\x16\x03\x01 garbage " * 8), "up"),
    "stall-handshake": (lambda: mitm.stall(0, keep=20), "up"),
    "wrong-version": (lambda: mitm.set_version(0, 3), "up"),
}


# fast tier: every kind of attack once (one header-field flip for all), on each kind of link;
# the full attack x link grid is slow
@pytest.mark.fast_cases(
    "flip-hello-control",
    "flip-sealed-up-control",
    "flip-flags-control",
    "flip-hello-down-control",
    "replay-data",
    "swap-relay",
    "truncate-close-control",
    "oversized-length-control",
    "garbage-first-control",
    "stall-handshake-data",
    "wrong-version-control",
)
@pytest.mark.parametrize("where", ["control", "data", "relay"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack(where, attack):
    make, direction = ATTACKS[attack]
    tamper = make()
    setup = Setup(where, **({"tamper_up": tamper} if direction == "up" else {"tamper_down": tamper}))
    try:
        t0 = time.monotonic()
        err = run_once(setup)
        elapsed = time.monotonic() - t0
        assert isinstance(err, errors.CmlpError), f"{where}/{attack}: no error ({err!r})"
        assert elapsed < 15, f"{where}/{attack}: took {elapsed:.1f} s"
        wire = bytes(setup.proxy.captured["up"]) + bytes(setup.proxy.captured["down"])
        assert SECRET.encode()[:16] not in wire
        assert all(st.thread.is_alive() for st in setup.stages), "a stage died"
        setup.proxy.upstream = setup.proxy.downstream = mitm.passthrough
        reinit_clean(setup)
    finally:
        setup.close()


def test_flip_in_stage_to_orchestrator_control_frames():
    """Downstream sealed frames only exist on the control channel (Ready, Pong, ...)."""
    setup = Setup("control", tamper_down=mitm.flip_bit(1, 20))
    try:
        err = run_once(setup)
        assert isinstance(err, errors.StageFailed) and "OpenFailed" not in repr(type(err))
        assert "stage 0" in str(err) and "authentication tag mismatch" in str(err)
        setup.proxy.downstream = mitm.passthrough
        reinit_clean(setup)
    finally:
        setup.close()


@pytest.mark.fast_cases("control", "relay")  # victim stage 0, then stage 1
@pytest.mark.parametrize("where", ["control", "data", "relay"])
def test_victim_errors_are_typed(where):
    """The stage on the receiving end reports the precise failure."""
    setup = Setup(where, tamper_up=mitm.flip_bit(2, 20))
    try:
        assert isinstance(run_once(setup), errors.CmlpError)
        victim = setup.stages[0] if where == "control" else setup.stages[1]
        assert mitm.wait_until(lambda: victim.worker.last_error is not None)
        assert isinstance(victim.worker.last_error, errors.OpenFailed)
    finally:
        setup.close()


@pytest.mark.parametrize("where", ["control", "data", "relay"])
def test_peer_with_other_measurements_is_refused(where):
    """A stage whose attestation claims other measurements than the manifest pins."""
    pins = {"0": "aa" * 48}
    real = make_manifest(
        2,
        relay=(where == "relay"),
        stage_overrides={0: {"expected_measurements": pins}, 1: {"expected_measurements": pins}},
    )
    honest = MockProvider({0: b"\xaa" * 48})
    rogue = MockProvider({0: b"\xbb" * 48})
    # control: stage 0 is the impostor (seen by the orchestrator);
    # data/relay: stage 1 is the impostor (seen by stage 0 and the orchestrator)
    providers = [rogue, honest] if where == "control" else [honest, rogue]
    stages = [
        StageThread(real, i, IdentityExecutor(), persistent=True, provider=providers[i], session=cfg())
        for i in range(2)
    ]
    try:
        orch = orchestrator(real, session=cfg(), data_setup_timeout=5)
        t0 = time.monotonic()
        with pytest.raises(errors.CmlpError, match=r"measurement\[0\] mismatch"):
            orch.start()
        assert time.monotonic() - t0 < 15
        orch.close()
    finally:
        for st in stages:
            st.stop()
