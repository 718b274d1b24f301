"""Control protocol envelope v1 (pipeline.md 2.2-2.3)."""

import json

import pytest

from cmlp.errors import MessageTooLarge, ProtocolError, VersionMismatch
from cmlp.pipeline import control as C

ORCH = [
    C.Init('{"stage_idx":0}', '{"dtype":"F32"}', 3),
    C.EstablishDataChannels(True, False),
    C.StartRequest(2**64 - 1, 4, 16),
    C.AbortRequest(7, "because"),
    C.Shutdown(),
    C.Ping(2**63 + 5),
]
STAGE = [
    C.Ready(1),
    C.DataChannelsReady(2),
    C.RequestDone(42),
    C.RequestDone(42, 1234),
    C.RequestError(42, "boom \u2620"),
    C.Pong(7),
    C.ShuttingDown(0),
]


@pytest.mark.parametrize("msg", ORCH)
def test_orchestrator_messages_roundtrip(msg):
    raw = msg.encode()
    assert C.decode_orchestrator_msg(raw) == msg
    assert C.decode_orchestrator_msg(raw).encode() == raw


@pytest.mark.parametrize("msg", STAGE)
def test_stage_messages_roundtrip(msg):
    raw = msg.encode()
    assert C.decode_stage_msg(raw) == msg


def test_exact_wire_forms():
    assert (
        C.StartRequest(42, 1, 5).encode()
        == b'{"version":1,"msg":{"type":"StartRequest","request_id":42,"num_micro_batches":1,"seq_len":5}}'
    )
    assert C.Pong(7).encode() == b'{"version":1,"msg":{"type":"Pong","seq":7}}'
    assert C.Shutdown().encode() == b'{"version":1,"msg":{"type":"Shutdown"}}'
    assert C.RequestDone(3).encode() == b'{"version":1,"msg":{"type":"RequestDone","request_id":3}}'
    assert (
        C.RequestDone(3, 10).encode()
        == b'{"version":1,"msg":{"type":"RequestDone","request_id":3,"compute_us":10}}'
    )
    assert (
        C.Init("s", "a", 2).encode()
        == b'{"version":1,"msg":{"type":"Init","stage_spec_json":"s","activation_spec_json":"a","num_stages":2}}'
    )


def test_unknown_extra_fields_are_ignored():
    raw = b'{"version":1,"msg":{"type":"Ready","stage_idx":1,"padding":"xxxx","more":[1,2]}}'
    assert C.decode_stage_msg(raw) == C.Ready(1)


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b'{"version":1',
        b'{"version":1}',
        b'{"version":1,"msg":5}',
        b'{"version":1,"msg":{"type":"Nope"}}',
        b'{"version":1,"msg":{"type":"Ping"}}',
        b'{"version":1,"msg":{"type":"Ping","seq":-1}}',
        b'{"version":1,"msg":{"type":"Ping","seq":18446744073709551616}}',
        b'{"version":1,"msg":{"type":"Ping","seq":1.0}}',
        b'{"version":1,"msg":{"type":"Ping","seq":true}}',
        b'{"version":1,"msg":{"type":"StartRequest","request_id":1,"num_micro_batches":4294967296,"seq_len":1}}',
        b'{"version":1,"msg":{"type":"Ping","seq":1,"seq":2}}',
        b"[" * 100000 + b"]" * 100000,
        b'{"version":1,"msg":{"type":"Ping","seq":' + b"9" * 5000 + b"}}",
        b'{"msg":{"type":"Shutdown"}}',
        b"\xff\xfe",
    ],
)
def test_malformed_messages(raw):
    with pytest.raises(ProtocolError, match="malformed orchestrator message"):
        C.decode_orchestrator_msg(raw)


def test_version_checked_after_parsing():
    with pytest.raises(VersionMismatch) as e:
        C.decode_stage_msg(b'{"version":999,"msg":{"type":"Ready","stage_idx":0}}')
    assert (e.value.expected, e.value.actual) == (1, 999)
    with pytest.raises(VersionMismatch):
        C.decode_orchestrator_msg(b'{"version":0,"msg":{"type":"Shutdown"}}')
    # wrong version *and* bad body: malformed wins, because parsing runs first
    with pytest.raises(ProtocolError):
        C.decode_orchestrator_msg(b'{"version":2,"msg":{"type":"Nope"}}')


def test_size_limit_checked_before_parsing():
    msg = C.RequestError(1, "x" * 100).encode()
    with pytest.raises(MessageTooLarge) as e:
        C.decode_stage_msg(msg, limit=50)
    assert (e.value.size, e.value.limit) == (len(msg), 50)
    assert C.decode_stage_msg(msg, limit=len(msg)) == C.RequestError(1, "x" * 100)
    with pytest.raises(MessageTooLarge, match="message too large"):
        C.decode_orchestrator_msg(b"x" * (4 * 1024 * 1024 + 1))


def test_protocol_version_is_one():
    assert C.PROTOCOL_VERSION == 1
    assert json.loads(C.Ping(1).encode())["version"] == 1
