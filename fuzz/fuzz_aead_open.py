"""The record layer's open path (transport.md 4.6) with key 42 x 32 and sid AA x 32.

Input layout, as the reference target: bytes [0..8] sequence (u64 BE), [8]
msg_type, [9] flags, the rest ciphertext || tag.  The record is opened at seq,
seq + 1, then seq again (the replay path) by one Opener.

Sealed mode (sequence's top byte 0x5E, unreachable from a real u32 header):
the rest is ``pos (u16 BE) | xor | plaintext``; the harness seals the
plaintext with a Sealer at the low 32 bits of the sequence, then flips
``xor`` into byte ``pos`` of the record (seq | type | flags | ciphertext).
So the success path is covered, and every single-byte change of a genuine
record must be rejected.

When the record fits a frame (u32 sequence, known type), it also goes
through FrameDecoder + Opener.open_frame + tensor dispatch like a channel.
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    import _checks

    from cmlp import _frame, _record
    from cmlp.errors import CmlpError, OpenFailed, SequenceError, SequenceGap, SequenceReplay

MAX_INPUT = 1 << 17
KEY = bytes([42]) * 32
SID = bytes([0xAA]) * 32
SEALED_MARK = 0x5E
U64 = (1 << 64) - 1
TAG = 16


def try_open(opener, seq: int, msg_type: int, flags: int, ct: bytes):
    """Plaintext bytes on success, the typed error otherwise."""
    try:
        return bytes(opener.open_in_place(seq, msg_type, flags, bytearray(ct)))
    except CmlpError as exc:
        return exc


def seal_and_mutate(seq: int, msg_type: int, flags: int, rest: bytes):
    """A genuine record, then at most one flipped byte: (record fields, plaintext, mutated)."""
    pos = int.from_bytes(rest[0:2], "big")
    xor = rest[2] if len(rest) > 2 else 0
    plaintext = rest[3:]
    seq = 0  # a fresh Opener expects exactly 0
    msg_type = 2 + msg_type % 5  # a sealable type: Data..Tensor
    sealer = _record.Sealer(KEY, SID, next_sequence=seq)
    frame = sealer.seal_frame(msg_type, flags, plaintext)
    record = bytearray(seq.to_bytes(8, "big") + bytes([msg_type, flags]) + frame[13:])
    if xor:
        record[pos % len(record)] ^= xor
    return split(bytes(record)), plaintext, bool(xor)


def split(record: bytes):
    return int.from_bytes(record[0:8], "big"), record[8], record[9], record[10:]


def check_frame_path(seq: int, msg_type: int, flags: int, ct: bytes, first) -> None:
    """The same record as a wire frame through the channel's receive steps."""
    if seq > 0xFFFFFFFF or not 1 <= msg_type <= 6 or len(ct) > _frame.MAX_PAYLOAD:
        return
    decoder = _frame.FrameDecoder()
    decoder.feed(_frame.encode_header(msg_type, flags, seq, len(ct)) + ct)
    frame = decoder.next_frame()
    assert frame is not None and decoder.buffered == 0
    try:
        plaintext = _record.Opener(KEY, SID).open_frame(frame)
    except CmlpError:
        # the frame path adds the Hello and ENCRYPTED checks in front of the AEAD
        assert isinstance(first, CmlpError) or msg_type == 1 or not flags & 1
        return
    assert bytes(plaintext) == first, "open_frame and open_in_place disagree"
    if msg_type == 6:
        _checks.check_tensor(plaintext)


def test_one_input(data: bytes) -> None:
    data = data.ljust(10, b"\0")
    seq, msg_type, flags, ct = split(data)
    genuine = None
    if seq >> 56 == SEALED_MARK:
        (seq, msg_type, flags, ct), genuine, mutated = seal_and_mutate(seq, msg_type, flags, ct)
    opener = _record.Opener(KEY, SID)
    first = try_open(opener, seq, msg_type, flags, ct)
    if genuine is not None:
        if mutated:
            assert isinstance(first, (OpenFailed, SequenceError)), (
                f"a modified record was accepted: {first!r}"
            )
        else:
            assert first == genuine, f"a genuine record did not open: {first!r}"
    if not isinstance(first, CmlpError):
        assert len(first) == len(ct) - TAG and opener.last_accepted == seq
    else:
        assert opener.last_accepted is None, "a failed open moved the replay window"
    second = try_open(opener, (seq + 1) & U64, msg_type, flags, ct)
    assert isinstance(first, CmlpError) or isinstance(second, CmlpError), (
        "one ciphertext opened under two different sequence numbers"
    )
    # the record again under the sequence it was accepted with: a replay.  (Not always seq:
    # a genuine record for 0 under seq 2**64 - 1 opens as `second`; seq is then a gap.)
    accepted = opener.last_accepted
    again = try_open(opener, seq if accepted is None else accepted, msg_type, flags, ct)
    if accepted is not None:
        assert isinstance(again, SequenceReplay), f"replayed record not rejected: {again!r}"
    else:
        assert isinstance(again, (OpenFailed, SequenceGap)), (
            f"expected OpenFailed or SequenceGap, got {again!r}"
        )
    check_frame_path(seq, msg_type, flags, ct, first)


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=4096)
