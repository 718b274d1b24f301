"""Pipeline protocol end to end with small executors (no model): lifecycle, faults, sync."""

import json
import threading
import time

import numpy as np
import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.attestation.role import ORCHESTRATOR, Role
from cmlp.pipeline import control as C
from cmlp.transport import SecureChannel, SessionConfig, sockets
from cmlp.transport.wire import Tensor
from tests.helpers.executors import DoubleExecutor, FailingExecutor, IdentityExecutor
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator, running_pipeline


def t(name, value=1.0, shape=(1, 4)):
    return Tensor.from_array(name, np.full(shape, value, np.float32))


@pytest.mark.fast_cases("1-False", "3-True", "4-False")
@pytest.mark.parametrize(
    "n, relay", [(1, False), (2, False), (3, False), (4, False), (2, True), (3, True), (4, True)]
)
def test_lifecycle_identity(n, relay):
    m = make_manifest(n, relay=relay)
    with running_pipeline(m, [IdentityExecutor() for _ in range(n)]) as (orch, stages):
        assert orch.state == "ready" and len(orch.relays) == (n - 1 if relay else 0)
        r = orch.infer([[t("input", 3.0)]], seq_len=4)
        out = r.outputs[0][0]
        assert (out.name, out.shape) == ("input", (1, 4)) and out.data[0, 0] == 3.0
        assert len(r.compute_us) == n and all(c is not None for c in r.compute_us)
        orch.health_check()
        orch.shutdown()
    for s in stages:
        assert s.join() and s.error is None


def test_double_executor_micro_batches_keep_order():
    m = make_manifest(3)
    with running_pipeline(m, [DoubleExecutor() for _ in range(3)]) as (orch, _):
        groups = [[Tensor.from_array(f"r0_mb{k}", np.full(4, k + 1, np.uint8))] for k in range(16)]
        r = orch.infer(groups, seq_len=1)
        assert [g[0].name for g in r.outputs] == [f"r0_mb{k}" for k in range(16)]
        assert [int(g[0].data[0]) for g in r.outputs] == [((k + 1) * 8) % 256 for k in range(16)]
        for req in range(5):
            r = orch.infer(
                [[Tensor.from_array(f"r{req}_mb{k}", np.ones(2, np.uint8))] for k in range(4)], seq_len=1
            )
            assert [g[0].name for g in r.outputs] == [f"r{req}_mb{k}" for k in range(4)]
        orch.shutdown()


def test_sequential_requests_and_large_tensors():
    # the activation spec must allow 1.5 MiB rows: stages cap their input by it
    m = make_manifest(2, relay=True, hidden_dim=393216)
    with running_pipeline(m, [IdentityExecutor(), IdentityExecutor()]) as (orch, _):
        for i in range(100):
            r = orch.infer([[t(f"req{i}", float(i))]], seq_len=1)
            assert r.outputs[0][0].name == f"req{i}" and r.outputs[0][0].data[0, 0] == i
        big = Tensor.from_array("big", np.arange(393216, dtype=np.float32).reshape(1, 393216))
        r = orch.infer([[big]], seq_len=1)
        np.testing.assert_array_equal(r.outputs[0][0].data[0], np.arange(393216, dtype=np.float32))
        # 16 micro-batches of 1.5 MiB: outputs are read while inputs are sent
        groups = [[Tensor.from_array(f"mb{k}", np.full((1, 393216), k, np.float32))] for k in range(16)]
        r = orch.infer(groups, seq_len=1)
        assert [float(g[0].data[0, 7]) for g in r.outputs] == [float(k) for k in range(16)]
        orch.shutdown()


def test_empty_request_and_seq_len_checked_before_sending():
    m = make_manifest(2, max_seq_len=16)
    with running_pipeline(m, [IdentityExecutor(), IdentityExecutor()]) as (orch, _):
        assert orch.infer([], seq_len=999).outputs == []
        with pytest.raises(errors.ProtocolError, match="seq_len 17 exceeds manifest max_seq_len 16"):
            orch.infer([[t("x")]], seq_len=17)
        assert not orch.tainted
        assert orch.infer([[t("x")]], seq_len=16).outputs[0][0].name == "x"
        orch.shutdown()


def test_stage_failure_is_reported_and_pipeline_continues():
    m = make_manifest(3)
    failing = FailingExecutor()
    with running_pipeline(m, [IdentityExecutor(), failing, IdentityExecutor()]) as (orch, stages):
        for _ in range(3):
            with pytest.raises(errors.RequestFailed) as e:
                orch.infer([[t("x")]], seq_len=1)
            assert "stage 1 error" in str(e.value) and "injected failure" in str(e.value)
        orch.health_check()
        failing.forward = IdentityExecutor().forward  # heal the stage
        assert orch.infer([[t("healed")]], seq_len=1).outputs[0][0].name == "healed"
        orch.shutdown()  # tolerant of leftovers
    assert all(s.join() and s.error is None for s in stages)


class FailOnMicroBatch(IdentityExecutor):
    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def forward(self, rid, mb, inputs):
        if mb == self.bad:
            raise errors.ForwardFailed(rid, mb, f"micro-batch {mb} is poisoned")
        return super().forward(rid, mb, inputs)


@pytest.mark.parametrize("failing_stage", [0, 1, 2])
def test_failure_mid_request_with_micro_batches_keeps_channels_in_sync(failing_stage):
    """pipeline.md Ambiguity 6: a failure on micro-batch k of m must not leave stale input."""
    m = make_manifest(3)
    execs = [IdentityExecutor() for _ in range(3)]
    execs[failing_stage] = FailOnMicroBatch(1)
    with running_pipeline(m, execs) as (orch, _):
        groups = [[t(f"mb{k}", k)] for k in range(4)]
        with pytest.raises(errors.RequestFailed, match="poisoned"):
            orch.infer(groups, seq_len=1)
        execs[failing_stage].bad = -1
        for i in range(3):
            r = orch.infer([[t(f"after{i}_{k}", k)] for k in range(3)], seq_len=1)
            assert [g[0].name for g in r.outputs] == [f"after{i}_{k}" for k in range(3)]
        orch.shutdown()


def test_infer_timeout_recovers_when_the_stage_finishes():
    m = make_manifest(2)
    slow = IdentityExecutor(delay=0.5)
    with running_pipeline(m, [IdentityExecutor(), slow], infer_timeout=0.1) as (orch, _):
        with pytest.raises(errors.PipelineTimeout, match="inference timed out"):
            orch.infer([[t("slow")]], seq_len=1)
        assert not orch.tainted
        slow.delay = 0
        orch.config.infer_timeout = 5
        r = orch.infer([[t("fresh")]], seq_len=1)
        assert r.outputs[0][0].name == "fresh"
        orch.health_check()
        orch.shutdown()


def test_infer_timeout_taints_when_the_stage_hangs():
    m = make_manifest(2)
    with running_pipeline(
        m, [IdentityExecutor(), IdentityExecutor(delay=30)], infer_timeout=0.1, stage_drain_timeout=0.3
    ) as (orch, _):
        t0 = time.monotonic()
        with pytest.raises(errors.PipelineTimeout):
            orch.infer([[t("x")]], seq_len=1)
        assert time.monotonic() - t0 < 3
        assert orch.tainted
        with pytest.raises(errors.Tainted):
            orch.infer([[t("x")]], seq_len=1)
        with pytest.raises(errors.Tainted):
            orch.health_check()


def test_ping_is_answered_while_a_request_waits_for_input():
    m = make_manifest(2)
    with running_pipeline(m, [IdentityExecutor(), IdentityExecutor()]) as (orch, _):
        # StartRequest without data: both stages wait for input, then a Ping arrives
        orch.links[0].send(C.StartRequest(12345, 1, 1))
        orch.links[0].send(C.Ping(777))
        assert orch.links[0].recv(timeout=5) == C.Pong(777)
        orch.links[0].send(C.AbortRequest(12345, "test abort"))
        msg = orch.links[0].recv(timeout=5)
        assert isinstance(msg, C.RequestError) and "aborted: test abort" in msg.error
        # stage 0 sent ERR downstream; stage 1 never got a StartRequest for it, so the
        # ERR is read as part of the next request there: use a fresh pipeline instead
        orch.close()


def test_persistent_stages_serve_successive_sessions():
    m = make_manifest(3)
    stages = [StageThread(m, i, DoubleExecutor(), persistent=True) for i in range(3)]
    try:
        for _session in range(3):
            orch = orchestrator(m)
            orch.start()
            r = orch.infer([[Tensor.from_array("x", np.ones(4, np.uint8))]], seq_len=1)
            assert int(r.outputs[0][0].data[0]) == 8
            orch.shutdown()
        assert [s.worker.sessions for s in stages] == [3, 3, 3]
        assert all(s.thread.is_alive() for s in stages)
    finally:
        for s in stages:
            s.stop()


def test_weight_hash_checks():
    good = "ab" * 32
    m = make_manifest(1, stage_overrides={0: {"weight_hashes": [good]}})
    with running_pipeline(m, [IdentityExecutor(hashes=[good])]) as (orch, stages):
        orch.shutdown()
    for hashes, text in (
        ([("cd" * 32)], "weight hash mismatch at index 0"),
        ([good, good], "weight hash count mismatch"),
    ):
        m = make_manifest(1, stage_overrides={0: {"weight_hashes": [good]}})
        stage = StageThread(m, 0, IdentityExecutor(hashes=hashes))
        orch = orchestrator(m)
        with pytest.raises(errors.CmlpError):
            orch.start()
        assert stage.join() and text in str(stage.error)


def test_init_must_match_the_stages_own_manifest():
    m = make_manifest(2)
    stage_view = json.loads(m.dumps())
    stage_view["stages"][0]["expected_measurements"] = {"0": "aa" * 32}
    from cmlp.manifest import Manifest

    strict = Manifest.from_json(json.dumps(stage_view))
    s0 = StageThread(strict, 0, IdentityExecutor())
    StageThread(m, 1, IdentityExecutor())
    orch = orchestrator(m)
    with pytest.raises(errors.CmlpError):
        orch.start()
    assert s0.join() and "does not match this stage's manifest" in str(s0.error)


def test_production_config_rejects_mock_attestation():
    """Mock documents prove nothing: the production profile refuses them at construction."""
    m = make_manifest(1)
    with pytest.raises(errors.InsecureConfiguration, match="refuses mock attestation"):
        orchestrator(m, session=SessionConfig(handshake_timeout=5))
    with pytest.raises(errors.InsecureConfiguration, match="refuses mock attestation"):
        StageThread(m, 0, IdentityExecutor(), session=SessionConfig(handshake_timeout=5))


def test_production_config_rejects_init_without_measurements():
    """Under the Nitro test PKI (real verifier): production still needs pinned stages."""
    pytest.importorskip("cryptography")
    pytest.importorskip("cbor2")
    from cmlp.attestation.factory import NoAttestation
    from cmlp.attestation.nitro import NitroVerifier
    from tests.helpers import nitro_pki

    m = make_manifest(1)
    StageThread(m, 0, IdentityExecutor())
    orch = orchestrator(
        m,
        provider=NoAttestation(),
        verifier=NitroVerifier(root_pem=nitro_pki.make_pki().root_pem),
        session=SessionConfig(handshake_timeout=5),
    )
    with pytest.raises(errors.StageFailed, match="production security profile"):
        orch.start()
    m = make_manifest(1)
    StageThread(m, 0, IdentityExecutor())
    orch = orchestrator(m, session=SessionConfig.development(require_measurements=True))
    with pytest.raises(errors.StageFailed, match="require_measurements"):
        orch.start()


def test_measurement_pinning_end_to_end():
    pins = {"0": "11" * 48}
    m = make_manifest(
        2,
        stage_overrides={0: {"expected_measurements": pins}, 1: {"expected_measurements": {"0": "22" * 48}}},
    )
    for i in range(2):
        StageThread(m, i, IdentityExecutor(), provider=MockProvider({0: bytes([0x11 * (i + 1)]) * 48}))
    orch = orchestrator(m, require_measurements=True)
    orch.start()
    assert orch.infer([[t("pinned")]], seq_len=1).outputs[0][0].name == "pinned"
    orch.shutdown()
    # a stage that claims other measurements is refused
    m = make_manifest(1, stage_overrides={0: {"expected_measurements": pins}})
    StageThread(m, 0, IdentityExecutor(), provider=MockProvider({0: b"\x99" * 48}))
    orch = orchestrator(m)
    with pytest.raises(errors.StageFailed, match=r"measurement\[0\] mismatch"):
        orch.start()


def test_config_validation():
    m = make_manifest(1)
    for field in (
        "stage_drain_timeout",
        "data_drain_timeout",
        "data_quiet_period",
        "infer_timeout",
        "health_check_timeout",
        "max_control_message_bytes",
    ):
        with pytest.raises(errors.ProtocolError, match=f"{field} must be > 0"):
            orchestrator(m, **{field: 0})


# ---------------------------------------------------------------------------
# rogue peers on the control channel
# ---------------------------------------------------------------------------
def roles_as(manifest, me, peer=ORCHESTRATOR):
    """SessionConfig role fields of a hand-made party (``me``/``peer``: stage index)."""
    digest = manifest.pipeline_digest()
    return {"own_role": Role(me, digest), "peer_role": Role(peer, digest)}


class RogueStage:
    """Accepts the orchestrator's control channel and answers with crafted bytes."""

    def __init__(self, manifest, reply: bytes):
        ep = manifest.stages[0].endpoint.control.endpoint
        self.listener = sockets.listen(ep)
        self.reply = reply
        self.roles = roles_as(manifest, 0)  # a well-placed stage 0, saying bad things
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        ch = SecureChannel.accept(
            sockets.accept(self.listener),
            MockProvider(),
            MockVerifier(),
            SessionConfig.development(**self.roles),
        )
        ch.recv(timeout=5)
        ch.send(self.reply)
        self.channel = ch


@pytest.mark.parametrize(
    "reply, exc, text",
    [
        (b'{"version":999,"msg":{"type":"Ready","stage_idx":0}}', errors.VersionMismatch, "999"),
        (b"not json at all", errors.ProtocolError, "malformed stage message"),
        (
            b'{"version":1,"msg":{"type":"Ready","stage_idx":0,"pad":"' + b"x" * 100 + b'"}}',
            errors.MessageTooLarge,
            "message too large",
        ),
        (b'{"version":1,"msg":{"type":"Ready","stage_idx":3}}', errors.StageFailed, "wrong stage_idx 3"),
        (b'{"version":1,"msg":{"type":"Pong","seq":1}}', errors.StageFailed, "expected Ready, got Pong"),
    ],
)
def test_orchestrator_rejects_bad_control_replies(reply, exc, text):
    m = make_manifest(1)
    RogueStage(m, reply)
    orch = orchestrator(m, max_control_message_bytes=100)
    with pytest.raises(exc) as e:
        orch.start()
    assert text in str(e.value)


@pytest.mark.parametrize(
    "payload, exc, text",
    [
        (b"garbage", errors.ProtocolError, "malformed"),
        (b'{"version":42,"msg":{"type":"Shutdown"}}', errors.VersionMismatch, "42"),
        (b'{"version":1,"msg":{"type":"Init","stage_spec_json":"x"', errors.ProtocolError, "malformed"),
        (b'{"version":1,"msg":{"type":"Ping","seq":1}}', errors.ProtocolError, "expected Init, got Ping"),
        (b"x" * 5000, errors.MessageTooLarge, "too large"),
    ],
)
def test_stage_rejects_bad_control_messages(payload, exc, text):
    m = make_manifest(1)
    stage = StageThread(m, 0, IdentityExecutor(), max_control_message_bytes=4096)
    ep = m.stages[0].endpoint.control.endpoint
    ch = SecureChannel.connect(
        sockets.connect_retry(ep),
        MockProvider(),
        MockVerifier(),
        SessionConfig.development(**roles_as(m, ORCHESTRATOR, 0)),
    )
    ch.send(payload)
    assert stage.join()
    assert isinstance(stage.error, exc) and text in str(stage.error)
    with pytest.raises(errors.Closed):
        ch.recv(timeout=5)  # the stage closed the connection


def test_init_may_pin_more_of_the_stage_than_its_own_manifest():
    """The host can pin exact image PCRs (which an image cannot hold about itself)."""
    base = make_manifest(
        2,
        stage_overrides={
            0: {"expected_measurements": {"8": "88" * 48}},
            1: {"expected_measurements": {"8": "88" * 48}},
        },
    )
    host_view = json.loads(base.dumps())
    for s in host_view["stages"]:
        s["expected_measurements"]["0"] = "00" * 48
    from cmlp.manifest import Manifest

    host = Manifest.from_json(json.dumps(host_view))
    claims = {0: b"\x00" * 48, 8: b"\x88" * 48}
    for i in range(2):
        StageThread(base, i, IdentityExecutor(), provider=MockProvider(claims))
    orch = orchestrator(host, require_measurements=True)
    orch.start()
    assert orch.infer([[t("x")]], seq_len=1).outputs[0][0].name == "x"
    orch.shutdown()
    # but never fewer or other values than the stage's own manifest
    assert base.stages[0].admits_init(host.stages[0])
    assert not host.stages[0].admits_init(base.stages[0])
