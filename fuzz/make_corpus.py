"""Write the seed corpus under fuzz/corpus/<harness>/ (deterministic; re-run to refresh).

Frame seeds are the reference's seed shapes of transport.md 8.4 with the
version byte patched from 2 to 4, named like the reference's (seed_1...).
Other seeds are valid examples: a captured handshake with the 3.10 test-vector
identities followed by sealed records, control messages, the shipped
manifests, mock documents and a tiny model.  Inputs that go through a
FuzzedDataProvider get their trailing control bytes appended here (and are
checked by decoding them with a real FuzzedDataProvider).

Usage: python fuzz/make_corpus.py
"""

from __future__ import annotations

import os
import shutil
import struct
import sys

os.environ.setdefault("CMLP_FUZZ_NATIVE", "0")  # plain extensions are enough to write seeds

import _harness  # noqa: E402

_harness.setup()

import _session  # noqa: E402
import atheris  # noqa: E402
import numpy as np  # noqa: E402

from cmlp import _frame, _record  # noqa: E402
from cmlp.attestation.mock import encode_mock_document  # noqa: E402
from cmlp.pipeline import control as C  # noqa: E402
from cmlp.transport.handshake import InitiatorHandshake, ResponderHandshake  # noqa: E402
from cmlp.transport.wire import Tensor  # noqa: E402

CORPUS = _harness.FUZZ_DIR / "corpus"
MANIFESTS = _harness.REPO / "cmlp" / "data" / "manifests"
AEAD_KEY = bytes([42]) * 32
AEAD_SID = bytes([0xAA]) * 32


def frame(msg_type: int, flags: int, seq: int, payload: bytes, version: int = 4) -> bytes:
    return struct.pack(">HBBBII", 0xCF4D, version, msg_type, flags, seq, len(payload)) + payload


def fdp_tail(*values: tuple[int, int, int]) -> bytes:
    """Trailing bytes that make FuzzedDataProvider.ConsumeIntInRange(lo, hi) return each value.

    The provider takes integer bytes from the end, most significant first.
    """
    consumed = []
    for value, lo, hi in values:
        span, n = hi - lo, 0
        while n < 8 and span >> (8 * n):
            n += 1
        r = value - lo
        consumed += [(r >> (8 * (n - 1 - i))) & 0xFF for i in range(n)]
    return bytes(reversed(consumed))


def check_fdp(data: bytes, *values: tuple[int, int, int]) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    got = [fdp.ConsumeIntInRange(lo, hi) for _, lo, hi in values]
    assert got == [v for v, _, _ in values], (got, values)


def hello_payload(msg_no: int, pk: bytes, nonce: bytes, doc: bytes) -> bytes:
    return bytes([msg_no]) + pk + nonce + struct.pack(">I", len(doc)) + doc


# ---------------------------------------------------------------------------
# per harness
# ---------------------------------------------------------------------------
def tensor_seeds() -> dict[str, bytes]:
    return {
        "seed_1": _frame.encode_tensor("", 0, (), bytes(4)),
        "seed_2": _frame.encode_tensor("test", 0, (4,), bytes(16)),
        "seed_3": _frame.encode_tensor("x", 6, (2, 3), b"\xab" * 6),
        "seed_4": b"",
        "seed_5": b"\x01\x00",
        "hidden_states": Tensor.from_array(
            "hidden_states", np.arange(12, dtype=np.float32).reshape(1, 3, 4)
        ).encode(),
        "input_ids_u32": _frame.encode_tensor("input_ids", 7, (1, 5), bytes(range(20))),
        "bf16": _frame.encode_tensor("b", 3, (2,), bytes(4)),
        "i64_matrix": _frame.encode_tensor("m", 5, (2, 2), bytes(32)),
        # regression: a zero dimension with the others past numpy's index range
        "regress_zero_dim_overflow": _frame.encode_tensor(
            "x", 6, (0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), b""
        ),
    }


def frame_stream_seeds() -> dict[str, bytes]:
    s1 = frame(2, 0, 0, b"hello world")
    s4 = frame(4, 0, 1, b"")
    tensor = tensor_seeds()["seed_2"]
    streams = {
        "seed_1": s1,
        "seed_2": frame(1, 0, 0, b"\x01" + bytes(64)),
        "seed_3": frame(6, 2, 0, tensor),
        "seed_4": s4,
        "seed_5": frame(5, 0, 2, b""),
        "seed_6": frame(3, 0, 0, b"something went wrong"),
        "seed_7": s1 + s4,
    }
    seeds = {name: data + fdp_tail((0, 0, 255)) for name, data in streams.items()}
    # chunked and view-keeping variants of the multi-frame shapes
    mixed = s1 + frame(6, 3, 1, tensor_seeds()["seed_3"]) + s4 + frame(2, 0, 3, bytes(40))
    control = 3 | 8  # 3 chunk sizes, keep views
    tail = ((control, 0, 255), (1, 1, 1 << 16), (13, 1, 1 << 16), (7, 1, 1 << 16))
    seeds["chunked_keep_views"] = mixed + fdp_tail(*tail)
    check_fdp(seeds["chunked_keep_views"], *tail)
    tail = ((0x30, 0, 255), (64, 0, 1 << 16))  # max_buffered 64, frame incomplete
    seeds["read_buffer_overflow"] = frame(1, 0, 0, bytes(2000))[: 13 + 100] + fdp_tail(*tail)
    check_fdp(seeds["read_buffer_overflow"], *tail)
    return seeds


def captured_handshake():
    """Msg 1..3 and a few sealed records each way, with the test-vector identities."""
    init = InitiatorHandshake(
        _session.PROVIDER,
        _session.VERIFIER,
        _session.CONFIG,
        secret_key=_session.SK_INITIATOR,
        nonce=_session.NONCE_INITIATOR,
    )
    resp = ResponderHandshake(
        _session.PROVIDER,
        _session.VERIFIER,
        _session.CONFIG,
        secret_key=_session.SK_RESPONDER,
        nonce=_session.NONCE_RESPONDER,
    )
    msg1 = init.start()
    dec = _frame.FrameDecoder()
    dec.feed(msg1)
    msg2 = resp.on_hello(dec.next_frame())
    dec.feed(msg2)
    msg3 = init.on_responder_hello(dec.next_frame())
    dec.feed(msg3)
    resp.on_confirmation(dec.next_frame())
    i2r = _record.Sealer(init.keys.send_key, init.keys.session_id)
    r2i = _record.Sealer(resp.keys.send_key, resp.keys.session_id)
    to_resp = (
        i2r.seal_frame(2, 1, b"hello")
        + i2r.seal_frame(6, 3, tensor_seeds()["seed_3"])
        + i2r.seal_frame(4, 1)
        + i2r.seal_frame(3, 1, b"oops")
        + i2r.seal_frame(5, 1)
    )
    to_init = r2i.seal_frame(4, 1) + r2i.seal_frame(6, 3, tensor_seeds()["seed_1"])
    return msg1, msg2, msg3, to_resp, to_init


def handshake_resp_seeds() -> dict[str, bytes]:
    hello_v2 = b"\x01" + b"\xaa" * 32 + b"\xbb" * 32
    seed_1 = frame(1, 0, 0, hello_v2)
    msg1, _, msg3, to_resp, _ = captured_handshake()
    return {
        "seed_1": seed_1,
        "seed_2": seed_1 + b"\xff" * 100,
        "seed_3": b"\xcf\x4d\x04",
        "seed_4": frame(2, 0, 0, hello_v2),
        "seed_5": frame(1, 0, 0, b"\x01" + bytes(10)),
        "seed_6": b"",
        "captured_hello_only": msg1,
        "captured_full": msg1 + msg3 + to_resp,
    }


def handshake_init_seeds() -> dict[str, bytes]:
    reply = hello_payload(2, b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 4)
    _, msg2, _, _, to_init = captured_handshake()
    return {
        "seed_1": b"",
        "seed_2": b"\xcf\x4d\x04",
        "seed_3": frame(2, 0, 0, reply),
        "seed_4": frame(1, 0, 0, reply[:-4] + b"\xcc\xdd\xee\xff"),
        "seed_5": bytes.fromhex("3ad7") + bytes((i * 37 + 11) & 0xFF for i in range(126)),
        "seed_6": frame(1, 0, 0, bytes(100))[: 13 + 20],
        "captured_reply": msg2,
        "captured_reply_records": msg2 + to_init,
    }


def aead_seeds() -> dict[str, bytes]:
    def record(seq: int, msg_type: int, flags: int, ct: bytes) -> bytes:
        return seq.to_bytes(8, "big") + bytes([msg_type, flags]) + ct

    def sealed(seq: int, msg_type: int, flags: int, pt: bytes) -> bytes:
        return record(seq, msg_type, flags, _record.aead_seal(AEAD_KEY, seq, msg_type, flags, AEAD_SID, pt))

    mark = 0x5E << 56
    return {
        "seed_1": record(0, 2, 1, b""),
        "seed_2": record(0, 2, 1, b"\xde\xad" * 16),
        "seed_3": record(1 << 63, 6, 3, bytes(48)),
        "seed_4": record(0, 2, 1, b"\xca\xfe" * 16),
        "genuine_data": sealed(0, 2, 1, b"hello"),
        "genuine_tensor": sealed(7, 6, 3, tensor_seeds()["seed_3"]),
        "genuine_heartbeat": sealed(0xFFFFFFFF, 4, 1, b""),
        "sealed_mode_clean": record(mark | 5, 2, 1, b"\x00\x00\x00" + b"plaintext"),
        "sealed_mode_flip": record(mark | 5, 6, 3, b"\x00\x0c\x01" + tensor_seeds()["seed_1"]),
    }


def control_seeds() -> dict[str, bytes]:
    messages = [
        C.Init(
            '{"stage_idx":0,"layer_start":0,"layer_end":2}',
            '{"dtype":"F32","hidden_dim":768,"max_seq_len":1024}',
            2,
        ),
        C.EstablishDataChannels(True, False),
        C.StartRequest(2**64 - 1, 4, 16),
        C.AbortRequest(7, "because"),
        C.Shutdown(),
        C.Ping(5),
        C.Ready(1),
        C.DataChannelsReady(2),
        C.RequestDone(42),
        C.RequestDone(42, 1234),
        C.RequestError(42, "boom \u2620"),
        C.Pong(7),
        C.ShuttingDown(0),
    ]
    seeds = {f"{i:02d}_{m.TYPE}": m.encode() for i, m in enumerate(messages)}
    seeds["version_2"] = b'{"version":2,"msg":{"type":"Ping","seq":1}}'
    seeds["duplicate_key"] = b'{"version":1,"version":1,"msg":{"type":"Shutdown"}}'
    # regression: a lone surrogate escape decoded to a str that encode() cannot send
    seeds["regress_lone_surrogate"] = (
        b'{"version":1,"msg":{"type":"AbortRequest","request_id":1,"reason":"\\ud800"}}'
    )
    return seeds


def hostblind_seeds() -> dict[str, bytes]:
    from cmlp.hostblind import protocol as P

    messages = [
        P.Generate(1, {"prompt": "h\u00e9llo", "params": {"max_tokens": 4, "temperature": 0.7}}),
        P.Generate(2, {"prompt_ids": [1, 2, 3], "params": {}}),
        P.Cancel(1),
        P.Info(4),
        P.InfoReply(4, {"chat_template": "{{ x }}", "bos_token": None, "eos_token": "</s>"}),
        P.Started(1, (1, 2, 50256)),
        P.Token(1, 0, 50256, "\u00e9\n"),
        P.Finished(1, "stop", 3, 4),
        P.Error(1, P.ERR_BUSY, "busy"),
        P.Begin(2, 0.7, 0.9, 40, 2**64 - 1),
        P.Step(2, 1, 6, 1),
        P.Chunk(3, 64, 1),
        P.StepGroup((P.StepRow(1, 0, 16, 16), P.StepRow(2, 1, 6, 1), P.StepRow(3, 2, 7, 1))),
        P.End(2),
        P.Fail(2, "stage 1: boom"),
        P.Sampled(2, 1, 17),
        P.SampledGroup((P.Sampled(1, 0, 5), P.Sampled(2, 1, 6), P.Sampled(3, 2, 7))),
    ]
    seeds = {f"{i:02d}_{type(m).__name__}": P.encode(m) for i, m in enumerate(messages)}
    seeds["group_seq_twice"] = P.encode(P.SampledGroup((P.Sampled(2, 1, 6), P.Sampled(2, 2, 6))))
    seeds["generate_nan"] = bytes([P.GENERATE]) + bytes(8) + b'{"prompt":"x","params":{"top_p":NaN}}'
    return seeds


def manifest_seeds() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(MANIFESTS.glob("*.json"))}


def mock_document_seeds() -> dict[str, bytes]:
    pk, nonce = bytes(range(32)), b"\xa1" * 32
    return {
        "handshake_doc": encode_mock_document(None, nonce, pk),
        "all_fields": encode_mock_document(b"user", nonce, pk),
        "empty_fields": encode_mock_document(None, None, None),
        "measurements": encode_mock_document(None, nonce, pk, {0: b"\x01" * 48, 8: b"\x02" * 4}),
        "truncated": encode_mock_document(None, nonce, pk)[:50],
    }


def model_seeds() -> dict[str, bytes]:
    import fuzz_model_files as M  # its import writes a scratch dir; removed below

    try:
        config, weights = M.BASE_CONFIG, M.BASE_WEIGHTS
    finally:
        shutil.rmtree(M.ROOT, ignore_errors=True)
    whole = 1 << 4  # layer_start 0, layer_end 2 (both layers)
    both = ((whole | 3, 0, 255), (len(config), 0, 65535))
    seeds = {
        "config_only": config + fdp_tail((whole | 1, 0, 255)),
        "weights_only": weights + fdp_tail((whole | 2, 0, 255)),
        "weights_first_layer": weights + fdp_tail((2, 0, 255)),
        "both": config + weights + fdp_tail(*both),
    }
    check_fdp(seeds["both"], *both)
    # regressions: json errors that are not JSONDecodeError escaped load_config
    config_only = fdp_tail((whole | 1, 0, 255))
    seeds["regress_config_deep_nesting"] = b"[" * 5000 + config_only
    seeds["regress_config_huge_int"] = b'{"vocab_size": ' + b"1" * 5000 + b"}" + config_only
    return seeds


def main() -> None:
    groups = {
        "frame_decode": frame_stream_seeds(),
        "tensor_decode": tensor_seeds(),
        "handshake_resp": handshake_resp_seeds(),
        "handshake_init": handshake_init_seeds(),
        "aead_open": aead_seeds(),
        "control_decode": control_seeds(),
        "hostblind_decode": hostblind_seeds(),
        "manifest": manifest_seeds(),
        "mock_document": mock_document_seeds(),
        "model_files": model_seeds(),
    }
    total = 0
    for harness, seeds in groups.items():
        out = CORPUS / harness
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name, data in seeds.items():
            (out / name).write_bytes(data)
            total += len(data)
    print(f"wrote {sum(map(len, groups.values()))} seeds, {total} bytes, to {CORPUS}", file=sys.stderr)


if __name__ == "__main__":
    main()
