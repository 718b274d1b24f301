"""Frame header and tensor sub-header codec (transport.md sections 1, 2 and 8.4)."""

import random
import struct

import numpy as np
import pytest

from cmlp import _frame, errors
from cmlp.transport.wire import DType, Tensor

MAX = 33554432


def header(msg_type=2, flags=0, seq=0, length=0, magic=0xCF4D, version=4):
    return struct.pack(">HBBBII", magic, version, msg_type, flags, seq, length)


# ---------------------------------------------------------------------------
# header: encode / decode and the order of checks in section 1.6
# ---------------------------------------------------------------------------
def test_header_roundtrip_all_types_and_flags():
    for t in range(1, 7):
        for flags in (0x00, 0x01, 0x03, 0xF0, 0xFF):
            raw = _frame.encode_header(t, flags, 0xDEADBEEF, 1234)
            assert raw == header(t, flags, 0xDEADBEEF, 1234)
            assert _frame.decode_header(raw) == (t, flags, 0xDEADBEEF, 1234)


def test_decode_header_needs_13_bytes():
    assert _frame.decode_header(header()[:12]) is None


@pytest.mark.parametrize(
    "raw, exc",
    [
        (header(magic=0x1234, version=9, msg_type=99, length=MAX + 1), errors.InvalidMagic),
        (header(version=2, msg_type=99, length=MAX + 1), errors.UnsupportedVersion),
        (header(msg_type=0, length=MAX + 1), errors.UnknownMessageType),
        (header(msg_type=7), errors.UnknownMessageType),
        (header(length=MAX + 1), errors.PayloadTooLarge),
        (header(length=0xFFFFFFFF), errors.PayloadTooLarge),
    ],
)
def test_header_errors_in_spec_order(raw, exc):
    with pytest.raises(exc):
        _frame.decode_header(raw)
    dec = _frame.FrameDecoder()
    dec.feed(raw)
    with pytest.raises(exc):
        dec.next_frame()
    # a decode error is fatal for the stream
    with pytest.raises(errors.ChannelBroken):
        dec.next_frame()


def test_error_values_are_reported():
    with pytest.raises(errors.InvalidMagic) as e:
        _frame.decode_header(header(magic=0x3AD7))
    assert e.value.magic == 0x3AD7
    with pytest.raises(errors.UnsupportedVersion) as e:
        _frame.decode_header(header(version=2))
    assert e.value.version == 2
    with pytest.raises(errors.PayloadTooLarge) as e:
        _frame.decode_header(header(length=0xFFFFFFFF))
    assert (e.value.size, e.value.max) == (0xFFFFFFFF, MAX)


def test_configured_max_checked_after_header_consumed():
    dec = _frame.FrameDecoder(max_payload=1000)
    dec.feed(header(length=1001))
    with pytest.raises(errors.PayloadTooLarge) as e:
        dec.next_frame()
    assert (e.value.size, e.value.max) == (1001, 1000)


def test_frame_constructor_limits():
    assert len(_frame.encode_frame(2, 0, 0, b"")) == 13
    big = bytes(MAX)
    assert len(_frame.encode_frame(2, 0, 0, big)) == MAX + 13
    with pytest.raises(errors.PayloadTooLarge):
        _frame.encode_frame(2, 0, 0, bytes(MAX + 1))
    with pytest.raises(errors.PayloadTooLarge):
        _frame.encode_header(2, 0, 0, MAX + 1)
    with pytest.raises(errors.UnknownMessageType):
        _frame.encode_frame(9, 0, 0, b"")


# ---------------------------------------------------------------------------
# streaming decoder
# ---------------------------------------------------------------------------
def test_byte_at_a_time_decode():
    frame = _frame.encode_frame(2, 0, 7, bytes(range(87)))
    assert len(frame) == 100
    dec = _frame.FrameDecoder()
    got = []
    for i in range(len(frame)):
        dec.feed(frame[i : i + 1])
        f = dec.next_frame()
        if f is not None:
            got.append(f)
    assert len(got) == 1
    assert got[0].sequence == 7 and bytes(got[0].payload) == bytes(range(87))
    assert dec.buffered == 0


def test_random_chunking_many_frames():
    rng = random.Random(1)
    frames = [
        (
            rng.randrange(1, 7),
            rng.randrange(0, 16),
            rng.randrange(2**32),
            rng.randbytes(rng.randrange(0, 3000)),
        )
        for _ in range(200)
    ]
    stream = b"".join(_frame.encode_frame(*f) for f in frames)
    dec = _frame.FrameDecoder()
    out, pos = [], 0
    while pos < len(stream):
        n = rng.randrange(1, 5000)
        dec.feed(stream[pos : pos + n])
        pos += n
        while (f := dec.next_frame()) is not None:
            out.append((f.msg_type, f.flags, f.sequence, bytes(f.payload)))
    assert out == frames


def test_large_claim_allocates_little():
    """A header claiming 8 MB with no payload: 'need more', buffer stays small."""
    dec = _frame.FrameDecoder()
    dec.feed(header(length=8_000_000))
    assert dec.next_frame() is None
    dec.feed(b"\x00" * 1000)
    assert dec.next_frame() is None
    assert dec.capacity <= 80_000


def test_max_plus_one_rejected_before_allocation():
    dec = _frame.FrameDecoder()
    dec.feed(header(length=MAX + 1))
    with pytest.raises(errors.PayloadTooLarge):
        dec.next_frame()
    assert dec.capacity < 100_000


def test_incremental_growth_256k_in_32k_chunks():
    payload = bytes(256 * 1024)
    frame = _frame.encode_frame(2, 0, 0, payload)
    dec = _frame.FrameDecoder()
    dec.feed(frame[:13])
    pending = 0
    for off in range(13, len(frame), 32 * 1024):
        assert dec.next_frame() is None
        pending += 1
        dec.feed(frame[off : off + 32 * 1024])
    f = dec.next_frame()
    assert f is not None and len(f.payload) == len(payload)
    assert pending == 8
    # growth stayed proportional to what arrived
    assert dec.capacity <= 2 * len(frame) + 65536


def test_normal_4k_frame_leaves_buffer_empty():
    dec = _frame.FrameDecoder()
    dec.feed(_frame.encode_frame(2, 1, 3, bytes(4096)))
    f = dec.next_frame()
    assert len(f.payload) == 4096
    assert dec.buffered == 0


def test_read_buffer_overflow_while_incomplete():
    dec = _frame.FrameDecoder(max_buffered=66573)
    dec.feed(header(msg_type=1, length=1_000_000))
    dec.feed(bytes(66573))
    with pytest.raises(errors.ReadBufferOverflow):
        dec.next_frame()


def test_received_views_are_never_overwritten():
    """A kept payload view stays intact while later frames reuse the decoder."""
    dec = _frame.FrameDecoder(initial_capacity=64)
    dec.feed(_frame.encode_frame(2, 0, 0, b"A" * 40))
    first = dec.next_frame().payload
    for i in range(50):
        dec.feed(_frame.encode_frame(2, 0, i + 1, bytes([i]) * 1000))
        assert bytes(dec.next_frame().payload) == bytes([i]) * 1000
    assert bytes(first) == b"A" * 40


def test_payload_alignment_for_tensor_views():
    """The first frame in a fresh or compacted buffer has an 8-aligned payload."""
    dec = _frame.FrameDecoder()
    t = Tensor.from_array("h", np.ones((2, 3), np.float32))
    dec.feed(_frame.encode_frame(6, 2, 0, t.encode()))
    payload = dec.next_frame().payload
    back = Tensor.from_payload(payload)
    assert back.data.ctypes.data % 8 == 0
    assert back.data.flags.aligned


# ---------------------------------------------------------------------------
# tensor sub-header
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(DType))
def test_tensor_roundtrip_every_dtype(dtype):
    rng = np.random.default_rng(int(dtype))
    raw = rng.integers(0, 255, size=3 * 4 * dtype.itemsize, dtype=np.uint8)
    arr = raw.view(dtype.numpy).reshape(3, 4)
    t = Tensor("t_" + dtype.name, dtype, (3, 4), arr)
    back = Tensor.from_payload(t.encode())
    assert back.name == t.name and back.dtype == dtype and back.shape == (3, 4)
    assert back.data.tobytes() == arr.tobytes()


@pytest.mark.parametrize(
    "name, dtype, shape, header_len, pad, data, total",
    [
        ("input_ids", DType.U32, (1, 5), 22, 2, 20, 44),
        ("hidden_states", DType.F32, (1, 5, 768), 30, 2, 15360, 15392),
        ("test", DType.F32, (4,), 13, 3, 16, 32),
        ("x", DType.U8, (2, 3), 14, 2, 6, 22),
        ("", DType.F32, (), 5, 3, 4, 12),
    ],
)
def test_worked_sizes(name, dtype, shape, header_len, pad, data, total):
    n = int(np.prod(shape)) if shape else 1
    payload = _frame.encode_tensor(name, int(dtype), shape, bytes(n * dtype.itemsize))
    assert len(payload) == total
    assert (header_len + pad) % 8 == 0 and header_len + pad + data == total
    assert _frame.decode_tensor_header(payload)[3:] == (header_len + pad, data)


def test_scalar_and_empty_dimension():
    name, code, shape, off, n = _frame.decode_tensor_header(_frame.encode_tensor("", 0, (), b"\x00" * 4))
    assert shape == () and n == 4
    payload = _frame.encode_tensor("cache_clear", int(DType.U32), (0,), b"")
    assert Tensor.from_payload(payload).shape == (0,)


def sub(ndims, dtype, shape=(), name=b"", pad=None, data=b""):
    h = 5 + 4 * len(shape) + len(name)
    p = bytes((8 - h % 8) % 8) if pad is None else pad
    return (
        struct.pack("<HB", ndims, dtype)
        + b"".join(struct.pack("<I", d) for d in shape)
        + struct.pack("<H", len(name))
        + name
        + p
        + data
    )


@pytest.mark.parametrize(
    "payload, exc",
    [
        (b"", errors.IncompleteTensorHeader),
        (b"\x01\x00", errors.IncompleteTensorHeader),
        (struct.pack("<HB", 33, 99), errors.ShapeOverflow),  # ndims before dtype
        (struct.pack("<HB", 1000, 0), errors.ShapeOverflow),
        (struct.pack("<HB", 1, 8), errors.UnknownDType),
        (struct.pack("<HB", 2, 0) + b"\x01\x00\x00\x00", errors.IncompleteTensorHeader),
        (struct.pack("<HBI", 1, 0, 4), errors.IncompleteTensorHeader),  # no name_len
        (struct.pack("<HBIH", 1, 0, 4, 5) + b"ab", errors.IncompleteTensorHeader),
        (sub(1, 6, (1,), b"\xff\xfe") + b"\x00", errors.InvalidTensorName),
        (sub(1, 6, (3,), b"ab")[:-1], errors.IncompleteTensorHeader),  # padding cut
        (sub(1, 6, (1,), b"ab", pad=b"\x00\x01\x00\x00\x00") + b"\x05", errors.InvalidPadding),
        (sub(3, 0, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)), errors.ShapeOverflow),
        (sub(1, 0, (4,), b"t", data=bytes(15)), errors.TensorDataSizeMismatch),
        (sub(1, 0, (4,), b"t", data=bytes(17)), errors.TensorDataSizeMismatch),  # trailing bytes
    ],
)
def test_tensor_decode_errors(payload, exc):
    with pytest.raises(exc):
        _frame.decode_tensor_header(payload)


def test_tensor_dims_limit():
    ok = sub(32, 6, (1,) * 32, data=b"\x07")
    assert Tensor.from_payload(ok).shape == (1,) * 32
    with pytest.raises(errors.ShapeOverflow):
        _frame.decode_tensor_header(sub(33, 6, (1,) * 33, data=b"\x07"))


def test_tensor_encode_errors_in_spec_order():
    with pytest.raises(errors.TensorDataSizeMismatch):
        _frame.encode_tensor("x" * 70000, 0, (2,) * 40, b"123")  # size checked first
    with pytest.raises(errors.ShapeOverflow):
        _frame.encode_tensor("x" * 70000, 6, (1,) * 33, b"\x00")  # then dims
    with pytest.raises(errors.TensorNameTooLong):
        _frame.encode_tensor("x" * 65536, 6, (1,), b"\x00")
    with pytest.raises(errors.UnknownDType):
        _frame.encode_tensor("x", 8, (1,), b"\x00")
    with pytest.raises(errors.ShapeOverflow):
        _frame.encode_tensor("x", 6, (-1,), b"")
    assert len(_frame.encode_tensor("x" * 65535, 6, (1,), b"\x00")) > 65535


def test_tensor_view_is_zero_copy():
    payload = bytearray(Tensor.from_array("a", np.arange(16, dtype=np.float32)).encode())
    t = Tensor.from_payload(payload)
    payload[-4:] = struct.pack("<f", 99.0)
    assert t.data[-1] == 99.0


# ---------------------------------------------------------------------------
# fuzz seed shapes of section 8.4, patched to version 4
# ---------------------------------------------------------------------------
def v4(frame: bytes) -> bytes:
    return frame[:2] + b"\x04" + frame[3:]


def v2(msg_type, flags, seq, payload):
    return struct.pack(">HBBBII", 0xCF4D, 2, msg_type, flags, seq, len(payload)) + payload


FRAME_SEEDS = [
    v2(2, 0, 0, b"hello world"),
    v2(1, 0, 0, b"\x01" + bytes(64)),
    v2(6, 2, 0, sub(1, 0, (4,), b"test", data=bytes(16))),
    v2(4, 0, 1, b""),
    v2(5, 0, 2, b""),
    v2(3, 0, 0, b"something went wrong"),
    v2(2, 0, 0, b"hello world") + v2(4, 0, 1, b""),
]


@pytest.mark.parametrize("seed", FRAME_SEEDS)
def test_frame_seeds_v2_rejected_v4_decode(seed):
    dec = _frame.FrameDecoder()
    dec.feed(seed)
    with pytest.raises(errors.UnsupportedVersion):
        dec.next_frame()
    # patch every frame to v4: the stream decodes and tensor payloads parse
    patched, pos = b"", 0
    while pos < len(seed):
        n = 13 + struct.unpack_from(">I", seed, pos + 9)[0]
        patched += v4(seed[pos : pos + n])
        pos += n
    dec = _frame.FrameDecoder()
    dec.feed(patched)
    while (f := dec.next_frame()) is not None:
        if f.flags & 0x02:
            t = Tensor.from_payload(f.payload)
            assert t.name == "test" and t.shape == (4,)
    assert dec.buffered == 0


@pytest.mark.parametrize(
    "payload, result",
    [
        (sub(0, 0, (), data=bytes(4)), ((), "")),
        (sub(1, 0, (4,), b"test", data=bytes(16)), ((4,), "test")),
        (sub(2, 6, (2, 3), b"x", data=b"\xab" * 6), ((2, 3), "x")),
        (b"", errors.IncompleteTensorHeader),
        (b"\x01\x00", errors.IncompleteTensorHeader),
    ],
)
def test_tensor_seed_shapes(payload, result):
    if isinstance(result, type):
        with pytest.raises(result):
            Tensor.from_payload(payload)
    else:
        t = Tensor.from_payload(payload)
        assert (t.shape, t.name) == result


def test_capacity_stays_bounded_when_each_view_outlives_the_next_frame():
    """Regression: a caller that keeps the previous payload view alive while the next
    frame arrives (the orchestrator's logits) must not make the buffer double every time."""
    dec = _frame.FrameDecoder()
    frame = _frame.encode_frame(6, 3, 0, bytes(200_000))
    previous = None
    for _ in range(50):
        for i in range(0, len(frame), 65536):
            dec.feed(frame[i : i + 65536])
        current = dec.next_frame().payload
        previous = current  # alive during the next iteration's receive
    assert previous is not None
    assert dec.capacity < 4 * len(frame)
