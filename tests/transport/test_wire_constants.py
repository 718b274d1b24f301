"""The wire constants Python names (cmlp/transport/wire.py) are the ones the Cython codec was
compiled with (pyx/wire.pxd, through _frame.WIRE), and they are the spec's numbers."""

import pytest

from cmlp import _frame, errors
from cmlp.transport import wire
from cmlp.transport.wire import Flag, MsgType


def test_python_names_are_the_compiled_values():
    assert wire.HEADER_SIZE == _frame.WIRE["HEADER_SIZE"]
    assert wire.MAX_PAYLOAD_SIZE == _frame.MAX_PAYLOAD == _frame.WIRE["MAX_PAYLOAD_SIZE"]
    assert wire.HANDSHAKE_MAX_BUFFERED == _frame.HANDSHAKE_MAX_BUFFERED
    assert {m.name: int(m) for m in MsgType} == {
        k[4:]: v for k, v in _frame.WIRE.items() if k.startswith("MSG_")
    }


def test_values_are_the_specs():
    # transport.md 1.1 (header), 1.5 (limits), 3.3 (document), 4.x (tag)
    assert (wire.HEADER_SIZE, wire.MAGIC, wire.PROTOCOL_VERSION) == (13, 0xCF4D, 4)
    assert wire.MAX_PAYLOAD_SIZE == 32 * 1024 * 1024
    assert wire.TAG_SIZE == 16
    assert wire.MAX_DOCUMENT_SIZE == 65536
    assert wire.HANDSHAKE_MAX_BUFFERED == 65536 + 13 + 1024 == 66573
    assert [int(m) for m in MsgType] == [1, 2, 3, 4, 5, 6]
    assert (int(Flag.ENCRYPTED), int(Flag.TENSOR_PAYLOAD)) == (0x01, 0x02)


def test_dtype_sizes_agree_with_the_codec():
    # the codec checks data length == elements x its own dtype size (wire.pxd dtype_size)
    for dt in wire.DType:
        payload = _frame.encode_tensor("t", int(dt), (3,), bytes(3 * dt.itemsize))
        name, code, shape, _, data_len = _frame.decode_tensor_header(payload)
        assert (name, code, tuple(shape), data_len) == ("t", int(dt), (3,), 3 * dt.itemsize)
        with pytest.raises(errors.TensorDataSizeMismatch):
            _frame.encode_tensor("t", int(dt), (3,), bytes(3 * dt.itemsize + 1))
