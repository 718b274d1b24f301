"""SecureChannel transport: wire protocol v4 of confidential-ml-transport.

Where things are
  wire.py       message types, flags, dtypes, the Tensor value
  handshake.py  the 3-message attested handshake as pure state machines
  channel.py    SecureChannel: drives the handshake, seals and opens frames
  config.py     SessionConfig, security profiles (RetryPolicy: cmlp.retry)
  sockets.py    TCP, AF_VSOCK and socketpair endpoints, connect with retry
  sodium.py     libsodium (via pysodium) for the handshake primitives
The byte-level hot path is Cython: cmlp._frame, cmlp._record, cmlp._netio.

The names below are imported on first use, so that modules which need only
addresses or configuration (cmlp.manifest, cmlp.transport.sockets) import
without the compiled extensions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmlp.transport.channel import (
        HEARTBEAT,
        SHUTDOWN,
        Data,
        ErrorMessage,
        Heartbeat,
        Message,
        SecureChannel,
        ShutdownMessage,
        TensorMessage,
    )
    from cmlp.transport.config import RetryPolicy, SecurityProfile, SessionConfig
    from cmlp.transport.wire import DType, Flag, MsgType, Tensor

_HOME = {
    "SecureChannel": "channel",
    "Message": "channel",
    "Data": "channel",
    "TensorMessage": "channel",
    "Heartbeat": "channel",
    "ShutdownMessage": "channel",
    "ErrorMessage": "channel",
    "HEARTBEAT": "channel",
    "SHUTDOWN": "channel",
    "SessionConfig": "config",
    "SecurityProfile": "config",
    "RetryPolicy": "config",
    "DType": "wire",
    "Flag": "wire",
    "MsgType": "wire",
    "Tensor": "wire",
}
__all__ = [
    "SecureChannel",
    "Message",
    "Data",
    "TensorMessage",
    "Heartbeat",
    "ShutdownMessage",
    "ErrorMessage",
    "HEARTBEAT",
    "SHUTDOWN",
    "SessionConfig",
    "SecurityProfile",
    "RetryPolicy",
    "DType",
    "Flag",
    "MsgType",
    "Tensor",
]
assert set(__all__) == set(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'cmlp.transport' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cmlp.transport.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
