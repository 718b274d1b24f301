"""SecureChannel: the attested handshake, then sealed frames over a socket.

This module is the thin I/O adapter around the sans-I/O pieces: it moves
bytes between a socket and the handshake state machines
(:mod:`cmlp.transport.handshake`), the frame decoder (``cmlp._frame``) and the
record layer (``cmlp._record``).  Byte pumping happens in Cython with the GIL
released.

Failure policy (transport.md 11.20, left open by the reference): any receive
error other than a timeout - a bad header, a failed tag, a replay, an
unencrypted or Hello frame, a malformed tensor - closes the channel and
raises a typed error.  A timeout keeps every received byte, so the next
``recv`` continues the same frame.  A send that was cut by its timeout closes
the channel too, since the stream cannot be resynchronised.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import NamedTuple, Optional, Union

import numpy as np

from cmlp import _frame, _netio, _record
from cmlp.deadline import Deadline
from cmlp.errors import ChannelBroken, Closed, CmlpError, NonceOverflow, Timeout
from cmlp.transport.config import SessionConfig
from cmlp.transport.handshake import InitiatorHandshake, ResponderHandshake, SessionKeys
from cmlp.transport.wire import HANDSHAKE_MAX_BUFFERED, HEADER_SIZE, DType, MsgType, Tensor

log = logging.getLogger(__name__)

_DATA = int(MsgType.DATA)
_TENSOR = int(MsgType.TENSOR)
_ERROR = int(MsgType.ERROR)
_HEARTBEAT = int(MsgType.HEARTBEAT)
_SHUTDOWN = int(MsgType.SHUTDOWN)
_tensor_from_payload = Tensor.from_payload


# ---------------------------------------------------------------------------
# Received messages
# ---------------------------------------------------------------------------
class Data(NamedTuple):
    payload: bytes


class TensorMessage(NamedTuple):
    tensor: Tensor


class Heartbeat(NamedTuple):
    pass


class ShutdownMessage(NamedTuple):
    pass


class ErrorMessage(NamedTuple):
    text: str


Message = Union[Data, TensorMessage, Heartbeat, ShutdownMessage, ErrorMessage]
HEARTBEAT = Heartbeat()
SHUTDOWN = ShutdownMessage()


# ---------------------------------------------------------------------------
# Handshake driver
# ---------------------------------------------------------------------------
_HANDSHAKE_EXPIRED = "timeout: handshake deadline exceeded"


def _read_frame(sock, decoder, deadline: Deadline):
    fd = sock.fileno()
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        try:
            n = decoder.fill(fd, deadline.left())
        except Timeout:
            raise Timeout(_HANDSHAKE_EXPIRED) from None
        if n == 0:
            raise Closed("connection closed during the handshake")


def _send(sock, data: bytes, deadline: Deadline) -> None:
    _netio.send_all(sock.fileno(), data, len(data), deadline.left())


def _handshake(sock, role: str, provider, verifier, config: SessionConfig, secret_key=None, nonce=None):
    decoder = _frame.FrameDecoder(max_buffered=HANDSHAKE_MAX_BUFFERED, initial_capacity=4096)
    hs: Union[InitiatorHandshake, ResponderHandshake]
    if role == "initiator":
        hs = InitiatorHandshake(provider, verifier, config, secret_key=secret_key, nonce=nonce)
        deadline = Deadline(config.handshake_timeout, _HANDSHAKE_EXPIRED)
        _send(sock, hs.start(), deadline)
        confirm = hs.on_responder_hello(_read_frame(sock, decoder, deadline))
        deadline.check()
        _send(sock, confirm, deadline)
    else:
        hs = ResponderHandshake(provider, verifier, config, secret_key=secret_key, nonce=nonce)
        deadline = Deadline(config.handshake_timeout, _HANDSHAKE_EXPIRED)
        reply = hs.on_hello(_read_frame(sock, decoder, deadline))
        deadline.check()
        _send(sock, reply, deadline)
        hs.on_confirmation(_read_frame(sock, decoder, deadline))
    # residual bytes (frames pipelined right after msg 3) stay in the decoder
    decoder.max_payload = config.max_payload_size
    decoder.max_buffered = config.max_payload_size + HEADER_SIZE + 4096
    return hs.keys, decoder


# ---------------------------------------------------------------------------
# The channel
# ---------------------------------------------------------------------------
class SecureChannel:
    """An established, encrypted, attested session over one stream socket.

    Thread-safety: one thread may send while another receives; concurrent
    senders (or receivers) are serialised by a lock.
    """

    def __init__(self, sock: socket.socket, keys: SessionKeys, decoder, config: SessionConfig, role: str):
        self._sock = sock
        self._fd = sock.fileno()
        self.config = config
        self.role = role
        self.session_id = keys.session_id
        self.peer_attestation = keys.peer_attestation
        self._rec = _record.RecordLayer(
            self._fd, decoder, keys.send_key, keys.recv_key, keys.session_id, config.max_payload_size
        )
        # re-entrant: close() may run inside recv()/send() after a failure
        self._send_lock = threading.RLock()
        self._recv_lock = threading.RLock()
        self._broken: Optional[str] = None

    @property
    def bytes_sent(self) -> int:
        return self._rec.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._rec.bytes_received

    # -- establishment -----------------------------------------------------
    @classmethod
    def connect(
        cls, sock: socket.socket, provider, verifier, config: Optional[SessionConfig] = None, **inject
    ) -> "SecureChannel":
        """Run the initiator handshake on a connected socket."""
        return cls._establish(sock, "initiator", provider, verifier, config, inject)

    @classmethod
    def accept(
        cls, sock: socket.socket, provider, verifier, config: Optional[SessionConfig] = None, **inject
    ) -> "SecureChannel":
        """Run the responder handshake on an accepted socket."""
        return cls._establish(sock, "responder", provider, verifier, config, inject)

    @classmethod
    def _establish(cls, sock, role, provider, verifier, config, inject):
        config = config or SessionConfig()
        try:
            keys, decoder = _handshake(
                sock, role, provider, verifier, config, inject.get("secret_key"), inject.get("nonce")
            )
        except BaseException:
            _close_socket(sock)  # no error frame during the handshake (section 3.8)
            raise
        return cls(sock, keys, decoder, config, role)

    # -- sending -----------------------------------------------------------
    def _send(self, send, *args) -> None:
        """Run one RecordLayer send under the lock with the failure policy."""
        with self._send_lock:
            self._check_usable()
            try:
                send(*args)
            except BaseException as exc:
                # never flush half a chain with a later send; the sequence rolls back
                # to the first unsent frame, so the peer never sees a gap
                self._rec.discard_pending()
                if self._rec.sealer.wiped:
                    self._fail(f"a send failed part-way: {exc!r}")
                    if isinstance(exc, (OSError, Closed)):
                        raise Closed(f"send failed: {exc}") from exc
                elif isinstance(exc, _netio.PartialWrite):
                    self._fail("a send was cut by its timeout")
                elif isinstance(exc, NonceOverflow):
                    self._fail("send sequence exhausted")
                elif isinstance(exc, (OSError, Closed)):
                    self._fail(f"send failed: {exc}")
                    raise Closed(f"send failed: {exc}") from exc
                raise

    def send(self, data, timeout: Optional[float] = None, more: bool = False) -> None:
        """Send application bytes as one sealed Data frame.

        ``more=True`` holds the sealed frame back so that the next send without
        it writes all held frames in one syscall (frames stay whole and ordered).
        """
        self._send(self._rec.send, _DATA, data, self._timeout(timeout), more)

    def send_tensor(
        self,
        tensor: Union[Tensor, str],
        array=None,
        dtype: Optional[DType] = None,
        timeout: Optional[float] = None,
        more: bool = False,
    ) -> None:
        """Send a Tensor frame: ``send_tensor(tensor)`` or ``send_tensor(name, array)``.

        The sub-header and data are written into the send buffer once and
        sealed in place, so the plaintext never survives the call.
        """
        if not isinstance(tensor, Tensor):
            tensor = Tensor.from_array(tensor, array, dtype)
        data = tensor.data
        if not (data.flags.c_contiguous and data.dtype == tensor.dtype.numpy):
            data = np.ascontiguousarray(data, dtype=tensor.dtype.numpy)
        self._send(
            self._rec.send_tensor,
            tensor.name.encode("utf-8"),
            int(tensor.dtype),
            tensor.shape,
            data,
            self._timeout(timeout),
            more,
        )

    def send_error(self, text: str, timeout: Optional[float] = None) -> None:
        """Send an Error frame (sealed, type 0x03, flags 0x01: transport.md 11.5)."""
        self._send(self._rec.send, _ERROR, text.encode("utf-8"), self._timeout(timeout))

    def heartbeat(self, timeout: Optional[float] = None) -> None:
        self._send(self._rec.send, _HEARTBEAT, b"", self._timeout(timeout))

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Send a sealed Shutdown frame; the transport stays open (section 6.4)."""
        self._send(self._rec.send, _SHUTDOWN, b"", self._timeout(timeout))

    # -- receiving ---------------------------------------------------------
    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message: Data, TensorMessage, Heartbeat, ShutdownMessage or ErrorMessage.

        ``timeout`` (seconds; default ``config.io_timeout``) raises
        ``errors.Timeout`` and keeps the channel usable.
        """
        with self._recv_lock:
            self._check_usable()
            try:
                msg_type, plaintext = self._rec.recv(self._timeout(timeout))
                if msg_type == _TENSOR:
                    return TensorMessage(_tensor_from_payload(plaintext))
                if msg_type == _DATA:
                    return Data(bytes(plaintext))
                if msg_type == _HEARTBEAT:
                    return HEARTBEAT
                if msg_type == _SHUTDOWN:
                    return SHUTDOWN
                return ErrorMessage(bytes(plaintext).decode("utf-8", errors="replace"))
            except Timeout:
                raise
            except CmlpError as exc:
                self._fail(str(exc))
                raise
            except OSError as exc:
                self._fail(str(exc))
                raise Closed(f"receive failed: {exc}") from exc

    def pending(self) -> bool:
        """True when a message may be waiting: bytes buffered or the socket readable."""
        if self._broken is not None or self._rec.decoder.buffered:
            return True
        readable, _, _ = select.select([self._fd], [], [], 0)
        return bool(readable)

    # -- lifecycle ---------------------------------------------------------
    def _timeout(self, timeout: Optional[float]) -> float:
        if timeout is None:
            timeout = self.config.io_timeout
        return -1.0 if timeout is None else float(timeout)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ChannelBroken(f"channel is closed: {self._broken}")

    def _fail(self, reason: str) -> None:
        if self._broken is None:
            log.debug("closing channel: %s", reason)
        self.close(reason)

    @property
    def closed(self) -> bool:
        return self._broken is not None

    def fileno(self) -> int:
        return self._fd

    def close(self, reason: str = "closed locally") -> None:
        """Close the socket and wipe keys and buffered bytes (idempotent).

        The socket is shut down first, which wakes a thread blocked in send or
        recv; the descriptor itself is closed only once no thread uses it, so
        its number cannot be reused under a concurrent call.
        """
        if self._broken is not None:
            return
        self._broken = reason
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._rec.wipe()
        got_send = self._send_lock.acquire(timeout=5.0)
        got_recv = self._recv_lock.acquire(timeout=5.0)
        try:
            if got_send and got_recv:
                self._sock.close()
                self._rec.decoder.wipe()
            else:
                log.warning("channel close: a thread still holds the socket; leaving it to GC")
        finally:
            if got_recv:
                self._recv_lock.release()
            if got_send:
                self._send_lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._broken else "open"
        return f"<SecureChannel {self.role} sid={self.session_id.hex()[:12]} {state}>"


def _close_socket(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
