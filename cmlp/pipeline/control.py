"""Control protocol: the JSON envelope v1 and its message catalogue (pipeline.md 2.2-2.3).

Wire form: ``{"version":1,"msg":{"type":"<Variant>",...fields...}}``, compact
JSON, keys in declaration order, one document per sealed Data frame.

Decoding is the reference's "checked" path, in its order: the size limit
before any parsing, then the envelope and the message (unknown *extra*
fields are ignored), then the version.  cmlp is stricter about what it
accepts: integers must be JSON integers in range (never floats or booleans),
duplicate keys and deep nesting are malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, ClassVar, Dict, Optional, Type, TypeVar, Union, cast

from cmlp import strict_json
from cmlp.errors import MessageTooLarge, ProtocolError, VersionMismatch

PROTOCOL_VERSION = 1
DEFAULT_MAX_CONTROL_MESSAGE_BYTES = 4 * 1024 * 1024
# The data channels' Data-frame markers (pipeline.md 3.1): END closes a micro-batch's
# tensors, ERR tells downstream that an upstream stage failed.
END = b"END"
ERR = b"ERR"
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


class _Msg:
    """Base of every control message; subclasses are dataclasses."""

    TYPE: ClassVar[str] = ""
    _RANGES: ClassVar[Dict[str, int]] = {}

    def to_json(self) -> dict:
        body = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a @_message dataclass
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            body[f.name] = value
        return {"version": PROTOCOL_VERSION, "msg": body}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_OPTIONAL = {"compute_us"}
_M = TypeVar("_M", bound=_Msg)

if TYPE_CHECKING:
    # tells mypy that @_message makes a frozen dataclass (typing has it from 3.11 only)
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_kwargs):
        return lambda decorator: decorator


@dataclass_transform(frozen_default=True)
def _message(type_name: str, **ranges: int) -> Callable[[Type[_M]], Type[_M]]:
    def wrap(cls: Type[_M]) -> Type[_M]:
        cls = dataclass(frozen=True)(cls)
        cls.TYPE = type_name
        cls._RANGES = ranges
        return cls

    return wrap


# -- orchestrator -> stage ---------------------------------------------------
@_message("Init", num_stages=U64)
class Init(_Msg):
    stage_spec_json: str
    activation_spec_json: str
    num_stages: int


@_message("EstablishDataChannels")
class EstablishDataChannels(_Msg):
    has_upstream: bool
    has_downstream: bool


@_message("StartRequest", request_id=U64, num_micro_batches=U32, seq_len=U32)
class StartRequest(_Msg):
    request_id: int
    num_micro_batches: int
    seq_len: int


@_message("AbortRequest", request_id=U64)
class AbortRequest(_Msg):
    request_id: int
    reason: str


@_message("Shutdown")
class Shutdown(_Msg):
    pass


@_message("Ping", seq=U64)
class Ping(_Msg):
    seq: int


# -- stage -> orchestrator ---------------------------------------------------
@_message("Ready", stage_idx=U64)
class Ready(_Msg):
    stage_idx: int


@_message("DataChannelsReady", stage_idx=U64)
class DataChannelsReady(_Msg):
    stage_idx: int


@_message("RequestDone", request_id=U64, compute_us=U64)
class RequestDone(_Msg):
    request_id: int
    compute_us: Optional[int] = None  # cmlp extension: stage compute time of the request


@_message("RequestError", request_id=U64)
class RequestError(_Msg):
    request_id: int
    error: str


@_message("Pong", seq=U64)
class Pong(_Msg):
    seq: int


@_message("ShuttingDown", stage_idx=U64)
class ShuttingDown(_Msg):
    stage_idx: int


OrchestratorMsg = Union[Init, EstablishDataChannels, StartRequest, AbortRequest, Shutdown, Ping]
StageMsg = Union[Ready, DataChannelsReady, RequestDone, RequestError, Pong, ShuttingDown]
ORCHESTRATOR_MESSAGES: Dict[str, Type[_Msg]] = {
    c.TYPE: c for c in (Init, EstablishDataChannels, StartRequest, AbortRequest, Shutdown, Ping)
}
STAGE_MESSAGES: Dict[str, Type[_Msg]] = {
    c.TYPE: c for c in (Ready, DataChannelsReady, RequestDone, RequestError, Pong, ShuttingDown)
}


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(body: dict, cls: Type[_Msg], f) -> object:
    if f.name not in body:
        if f.name in _OPTIONAL:
            return None
        raise _Malformed(f"missing field `{f.name}`")
    value = body[f.name]
    if f.type in ("int", "Optional[int]") or f.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Malformed(f"field `{f.name}`: expected an integer, got {value!r}")
        limit = cls._RANGES.get(f.name, U64)
        if not 0 <= value <= limit:
            raise _Malformed(f"field `{f.name}`: {value} out of range")
    elif f.type in ("bool",) or f.type is bool:
        if not isinstance(value, bool):
            raise _Malformed(f"field `{f.name}`: expected a boolean, got {value!r}")
    elif f.type in ("str",) or f.type is str:
        if not isinstance(value, str):
            raise _Malformed(f"field `{f.name}`: expected a string, got {value!r}")
        if not value.isascii() and not _is_unicode(value):
            # a JSON escape of a lone surrogate: not a Unicode string (serde_json rejects
            # it), and encode() could not send it back
            raise _Malformed(f"field `{f.name}`: string holds a lone surrogate")
    return value


def _decode(payload: bytes, catalogue: Dict[str, Type[_Msg]], who: str, limit: int) -> _Msg:
    size = len(payload)
    if size > limit:
        raise MessageTooLarge(size, limit)
    try:
        try:
            doc = strict_json.loads(payload)
        except ValueError as exc:
            raise _Malformed(str(exc)) from None
        if not isinstance(doc, dict):
            raise _Malformed("envelope is not an object")
        if "version" not in doc:
            raise _Malformed("missing field `version`")
        version = doc["version"]
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= U32:
            raise _Malformed(f"field `version`: expected a u32, got {version!r}")
        body = doc.get("msg")
        if not isinstance(body, dict):
            raise _Malformed("missing field `msg`" if body is None else "`msg` is not an object")
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in catalogue:
            raise _Malformed(f"unknown variant {kind!r}")
        cls = catalogue[kind]
        msg = cls(**{f.name: _field(body, cls, f) for f in fields(cls)})  # type: ignore[arg-type]  # a @_message dataclass
    except _Malformed as exc:
        raise ProtocolError(f"malformed {who} message ({size} bytes): {exc}") from None
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(PROTOCOL_VERSION, version)
    return msg


def decode_orchestrator_msg(
    payload: bytes, limit: int = DEFAULT_MAX_CONTROL_MESSAGE_BYTES
) -> OrchestratorMsg:
    """What a stage receives."""
    return cast(OrchestratorMsg, _decode(payload, ORCHESTRATOR_MESSAGES, "orchestrator", limit))


def decode_stage_msg(payload: bytes, limit: int = DEFAULT_MAX_CONTROL_MESSAGE_BYTES) -> StageMsg:
    """What the orchestrator receives."""
    return cast(StageMsg, _decode(payload, STAGE_MESSAGES, "stage", limit))


def describe(msg) -> str:
    """Short text for error messages ("expected Ready, got Pong")."""
    return getattr(msg, "TYPE", type(msg).__name__)
