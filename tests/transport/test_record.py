"""Record layer: sealing, opening, replay window, nonce limit (transport.md section 4)."""

import pytest

from cmlp import _frame, _record, errors

KEY = bytes([42]) * 32
SID = bytes([0xAA]) * 32


def pair():
    return _record.Sealer(KEY, SID), _record.Opener(KEY, SID)


def decode(frame: bytes):
    dec = _frame.FrameDecoder()
    dec.feed(frame)
    return dec.next_frame()


def test_roundtrip_all_message_types():
    s, o = pair()
    for t, flags, pt in [
        (2, 1, b"data"),
        (6, 3, b"tensor-bytes"),
        (4, 1, b""),
        (5, 1, b""),
        (3, 1, "erreur \u00e9".encode()),
    ]:
        frame = s.seal_frame(t, flags, pt)
        assert len(frame) == 13 + len(pt) + 16
        f = decode(frame)
        assert (f.msg_type, f.flags) == (t, flags)
        assert bytes(o.open_frame(f)) == pt


def test_sequence_counts_up_from_zero_shared_by_all_types():
    s, o = pair()
    for i, t in enumerate([2, 4, 6, 5, 3, 2]):
        f = decode(s.seal_frame(t, 1 | (2 if t == 6 else 0), b"x"))
        assert f.sequence == i
        o.open_frame(f)
    assert s.next_sequence == 6 and o.last_accepted == 5


@pytest.mark.parametrize("offset", [3, 4, 5, 8, 13, 20, -1])
def test_single_bit_flip_anywhere_is_rejected(offset):
    """Type, flags, sequence, ciphertext and tag are all authenticated."""
    s, o = pair()
    frame = bytearray(s.seal_frame(2, 1, b"attack at dawn"))
    frame[offset] ^= 0x01
    try:
        f = decode(bytes(frame))
    except errors.FrameError:
        return  # e.g. a type flipped to an invalid value: rejected by the codec
    with pytest.raises(
        (errors.OpenFailed, errors.SequenceError, errors.UnencryptedFrame, errors.UnexpectedMessage)
    ):
        o.open_frame(f)
    assert o.last_accepted is None


def test_flag_bits_outside_known_set_are_bound_by_aad():
    s, o = pair()
    f = decode(s.seal_frame(2, 0x81, b"x"))
    assert bytes(o.open_frame(f)) == b"x"


def test_replay_and_reorder_rejected_before_decrypt():
    s, o = pair()
    frames = [s.seal_frame(2, 1, bytes([i])) for i in range(4)]
    o.open_frame(decode(frames[0]))
    with pytest.raises(errors.SequenceGap) as e:
        o.open_frame(decode(frames[2]))  # frame 1 dropped or reordered
    assert (e.value.received, e.value.expected) == (2, 1)
    o.open_frame(decode(frames[1]))
    with pytest.raises(errors.SequenceReplay) as e:
        o.open_frame(decode(frames[1]))  # duplicated
    assert (e.value.received, e.value.expected) == (1, 2)
    with pytest.raises(errors.SequenceReplay):
        o.open_frame(decode(frames[0]))  # replayed
    assert bytes(o.open_frame(decode(frames[2]))) == b"\x02"
    assert bytes(o.open_frame(decode(frames[3]))) == b"\x03"
    assert o.expected_sequence == 4


def test_first_frame_must_be_sequence_zero():
    """Stricter than transport.md 1.4: no arbitrary first sequence (a dropped first frame)."""
    s = _record.Sealer(KEY, SID, next_sequence=1)
    o = _record.Opener(KEY, SID)
    with pytest.raises(errors.SequenceGap):
        o.open_frame(decode(s.seal_frame(2, 1, b"late")))
    assert o.last_accepted is None
    s = _record.Sealer(KEY, SID, next_sequence=1000)
    with pytest.raises(errors.SequenceGap):
        o.open_frame(decode(s.seal_frame(2, 1, b"late")))


def test_failed_open_does_not_advance_window():
    s, o = pair()
    good = s.seal_frame(2, 1, b"ok")
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    with pytest.raises(errors.OpenFailed):
        o.open_frame(decode(bytes(bad)))
    assert o.last_accepted is None
    assert bytes(o.open_frame(decode(good))) == b"ok"


def test_nonce_overflow_at_two_to_the_32():
    s = _record.Sealer(KEY, SID, next_sequence=0xFFFFFFFF)
    s.seal_frame(2, 1, b"last one")
    with pytest.raises(errors.NonceOverflow):
        s.seal_frame(2, 1, b"one too many")


def test_sender_side_size_check():
    s = _record.Sealer(KEY, SID, max_payload=1000)
    s.seal_frame(2, 1, bytes(1000 - 16))
    with pytest.raises(errors.PayloadTooLarge):
        s.seal_frame(2, 1, bytes(1000 - 15))
    assert s.next_sequence == 1  # nothing consumed by the refused send


def test_hello_and_unencrypted_frames_rejected_after_handshake():
    _, o = pair()
    with pytest.raises(errors.UnexpectedMessage):
        o.open_frame(decode(_frame.encode_frame(1, 1, 0, bytes(20))))
    with pytest.raises(errors.UnencryptedFrame):
        o.open_frame(decode(_frame.encode_frame(2, 0, 0, b"plaintext")))


def test_wiped_keys_refuse_work():
    s, o = pair()
    s.wipe()
    o.wipe()
    with pytest.raises(errors.ChannelBroken):
        s.seal_frame(2, 1, b"x")
    with pytest.raises(errors.ChannelBroken):
        o.open_in_place(0, 2, 1, bytearray(32))


@pytest.mark.parametrize(
    "seed",
    [
        bytes(8) + b"\x02\x01",
        bytes(8) + b"\x02\x01" + bytes.fromhex("dead") * 16,
        bytes.fromhex("8000000000000000") + b"\x06\x03" + bytes(48),
        bytes(8) + b"\x02\x01" + bytes.fromhex("cafe") * 16,
    ],
)
def test_aead_open_fuzz_seeds(seed):
    """Section 8.4 aead_open seeds: open at seq, seq+1, then seq again (replay)."""
    seq = int.from_bytes(seed[:8], "big")
    o = _record.Opener(KEY, SID)
    for s in (seq, seq + 1, seq):
        with pytest.raises((errors.OpenFailed, errors.SequenceError)):
            o.open_in_place(s & 0xFFFFFFFFFFFFFFFF, seed[8], seed[9], bytearray(seed[10:]))


def test_key_length_validated():
    with pytest.raises(ValueError):
        _record.Sealer(bytes(31), SID)
    with pytest.raises(ValueError):
        _record.Opener(KEY, bytes(33))
