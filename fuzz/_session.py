"""Fixed handshake identities and the post-handshake receive path (imported after setup).

Both handshake harnesses use the keys and nonces of the transport.md 3.10 test
vector, so a captured handshake in the seed corpus (fuzz/make_corpus.py)
verifies inside the harness, and mutations of the frames behind it reach the
record layer and the tensor decoder.
"""

from __future__ import annotations

import _checks

from cmlp import _frame, _record
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.errors import CmlpError
from cmlp.transport.config import SessionConfig
from cmlp.transport.wire import HANDSHAKE_MAX_BUFFERED, HEADER_SIZE, MsgType

SK_INITIATOR = bytes([0x11]) * 32
NONCE_INITIATOR = bytes([0xA1]) * 32
SK_RESPONDER = bytes([0x22]) * 32
NONCE_RESPONDER = bytes([0xB2]) * 32
CONFIG = SessionConfig.development()
PROVIDER = MockProvider()
VERIFIER = MockVerifier()


def handshake_decoder():
    """The decoder the channel uses during the handshake (channel._handshake)."""
    return _frame.FrameDecoder(max_buffered=HANDSHAKE_MAX_BUFFERED, initial_capacity=4096)


def check_reply(reply: bytes, expected_seq: int) -> None:
    """A frame we produced must decode as one whole Hello frame."""
    decoder = _frame.FrameDecoder()
    decoder.feed(reply)
    frame = decoder.next_frame()
    assert frame is not None and frame.msg_type == MsgType.HELLO
    assert frame.sequence == expected_seq and decoder.buffered == 0


def receive_records(keys, decoder) -> None:
    """Residual bytes after the handshake, through the channel's receive path.

    Like SecureChannel.recv: frame decode with the session limits, open with the
    receive key (replay window, AEAD), then dispatch on the message type.  Stops
    at the first typed error, as the channel closes on it.
    """
    decoder.max_payload = CONFIG.max_payload_size
    decoder.max_buffered = CONFIG.max_payload_size + HEADER_SIZE + 4096
    opener = _record.Opener(keys.recv_key, keys.session_id)
    try:
        while (frame := decoder.next_frame()) is not None:
            plaintext = opener.open_frame(frame)
            if frame.msg_type == MsgType.TENSOR:
                _checks.check_tensor(plaintext)
            elif frame.msg_type == MsgType.ERROR:
                bytes(plaintext).decode("utf-8", errors="replace")
    except CmlpError:
        pass
