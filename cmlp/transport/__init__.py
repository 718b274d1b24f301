"""SecureChannel transport: wire protocol v4 of confidential-ml-transport.

Where things are
  wire.py       message types, flags, dtypes, the Tensor value
  handshake.py  the 3-message attested handshake as pure state machines
  channel.py    SecureChannel: drives the handshake, seals and opens frames
  config.py     SessionConfig, security profiles, RetryPolicy
  sockets.py    TCP, AF_VSOCK and socketpair endpoints, connect with retry
  sodium.py     libsodium (via pysodium) for the handshake primitives
The byte-level hot path is Cython: cmlp._frame, cmlp._record, cmlp._netio.
"""

from cmlp.transport.channel import (HEARTBEAT, SHUTDOWN, Data, ErrorMessage, Heartbeat, Message,
                                    SecureChannel, ShutdownMessage, TensorMessage)
from cmlp.transport.config import RetryPolicy, SecurityProfile, SessionConfig, with_retry
from cmlp.transport.wire import DType, Flag, MsgType, Tensor

__all__ = [
    "SecureChannel", "Message", "Data", "TensorMessage", "Heartbeat", "ShutdownMessage",
    "ErrorMessage", "HEARTBEAT", "SHUTDOWN", "SessionConfig", "SecurityProfile", "RetryPolicy",
    "with_retry", "DType", "Flag", "MsgType", "Tensor",
]
