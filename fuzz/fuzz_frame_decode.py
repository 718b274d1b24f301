"""Arbitrary bytes -> FrameDecoder (transport.md 1.6), fed in fuzzer-chosen chunks.

Input layout (the FuzzedDataProvider takes integers from the END of the input,
bytes from the front, so a seed is ``stream || control byte``):

  control byte (last)  bits 0-2: number of chunk sizes that follow (0: one chunk)
                       bit 3: keep every payload view alive (decoder must regrow,
                              never overwrite exported bytes)
                       bits 4-5: limits: 0 default, 1 handshake (66 573 buffered),
                              2 small max_payload, 3 small max_buffered
  chunk sizes          from the end, one ConsumeIntInRange(1, 65536) each
  stream               the remaining bytes, fed chunk by chunk (sizes cycle)

After every chunk all complete frames are drained; Tensor frames (type or
TENSOR_PAYLOAD flag) go to the tensor decoder.  Invariants checked:
  * the buffer capacity stays within 2 x bytes fed + 64 KiB (+ the initial 4 KiB):
    nothing is allocated from a claimed length;
  * each frame equals the next header + payload of the stream, its payload length
    is the header's, and re-encoding it gives the same bytes;
  * a decode error is sticky (the next call raises ChannelBroken);
  * views kept alive still hold their bytes at the end.
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    import _checks

    from cmlp import _frame
    from cmlp.errors import ChannelBroken, CmlpError
    from cmlp.transport.wire import HANDSHAKE_MAX_BUFFERED, MsgType

MAX_INPUT = 1 << 18
INITIAL_CAPACITY = 4096 + 3  # FrameDecoder's initial_capacity + its BASE offset
GROWTH_STEP = _frame.GROWTH_STEP
TENSOR = int(MsgType.TENSOR)
TENSOR_FLAG = 0x02


def make_decoder(limits: int, fdp):
    if limits == 1:
        return _frame.FrameDecoder(max_buffered=HANDSHAKE_MAX_BUFFERED)
    if limits == 2:
        return _frame.FrameDecoder(max_payload=fdp.ConsumeIntInRange(1, 1 << 16))
    if limits == 3:
        return _frame.FrameDecoder(max_buffered=fdp.ConsumeIntInRange(0, 1 << 16))
    return _frame.FrameDecoder()


def check_frame(frame, stream: bytes, pos: int) -> int:
    """Compare a decoded frame with the stream at ``pos``; returns the next position."""
    header = _frame.decode_header(stream[pos : pos + 13])
    assert header is not None, "decoder returned a frame before 13 header bytes"
    msg_type, flags, seq, length = header
    payload = bytes(frame.payload)
    assert (frame.msg_type, frame.flags, frame.sequence) == (msg_type, flags, seq)
    assert len(payload) == length, f"payload is {len(payload)} bytes, header says {length}"
    end = pos + 13 + length
    assert stream[pos + 13 : end] == payload
    assert _frame.encode_frame(msg_type, flags, seq, payload) == stream[pos:end]
    return end


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    control = fdp.ConsumeIntInRange(0, 255)
    sizes = [fdp.ConsumeIntInRange(1, 1 << 16) for _ in range(control & 7)]
    keep_views = bool(control & 8)
    decoder = make_decoder((control >> 4) & 3, fdp)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())

    kept = []
    fed = pos = 0
    chunk = 0
    failed = False
    while fed < len(stream) and not failed:
        size = sizes[chunk % len(sizes)] if sizes else len(stream)
        chunk += 1
        decoder.feed(stream[fed : fed + size])
        fed = min(len(stream), fed + size)
        limit = 2 * fed + GROWTH_STEP + INITIAL_CAPACITY
        assert decoder.capacity <= limit, f"capacity {decoder.capacity} > {limit} after {fed} B"
        while True:
            try:
                frame = decoder.next_frame()
            except CmlpError:
                failed = True
                break
            if frame is None:
                break
            pos = check_frame(frame, stream, pos)
            if frame.msg_type == TENSOR or frame.flags & TENSOR_FLAG:
                tensor = _checks.check_tensor(frame.payload)
                if keep_views and tensor is not None:
                    kept.append((tensor.data, tensor.data.tobytes()))
            if keep_views:
                kept.append((frame.payload, bytes(frame.payload)))
    if failed:
        try:
            decoder.next_frame()
        except ChannelBroken:
            pass
        else:
            raise AssertionError("decoder kept going after a fatal decode error")
    else:
        assert decoder.buffered == len(stream) - pos
    for view, expected in kept:  # memoryviews and numpy arrays (bytes() of a 0-d array lies)
        assert view.tobytes() == expected, "an exported payload view was overwritten"


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=16384)
