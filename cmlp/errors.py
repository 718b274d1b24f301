"""Typed errors for every layer of cmlp.

The hierarchy mirrors the reference's error kinds (transport.md section 7,
pipeline.md section 4) so that a caller can catch a whole group
(``FrameError``, ``CryptoError``, ``AttestError``, ``SessionError``,
``PipelineError``) or one precise failure.  Every error raised on bytes that
came from the network is one of these classes: never a bare ``ValueError``,
``IndexError`` or ``struct.error``.
"""

from __future__ import annotations


class CmlpError(Exception):
    """Root of every error cmlp raises on purpose."""


# --------------------------------------------------------------------------
# Frame layer (transport.md sections 1 and 2)
# --------------------------------------------------------------------------
class FrameError(CmlpError):
    """A frame or a tensor sub-header does not follow the wire format."""


class InvalidMagic(FrameError):
    def __init__(self, magic: int):
        self.magic = magic
        super().__init__(f"invalid magic 0x{magic:04X} (expected 0xCF4D)")


class UnsupportedVersion(FrameError):
    def __init__(self, version: int):
        self.version = version
        super().__init__(f"unsupported protocol version {version} (expected 4)")


class UnknownMessageType(FrameError):
    def __init__(self, msg_type: int):
        self.msg_type = msg_type
        super().__init__(f"unknown message type 0x{msg_type:02X}")


class PayloadTooLarge(FrameError):
    def __init__(self, size: int, max: int):
        self.size = size
        self.max = max
        super().__init__(f"payload of {size} bytes exceeds the maximum of {max} bytes")


class UnknownDType(FrameError):
    def __init__(self, code: int):
        self.code = code
        super().__init__(f"unknown tensor dtype code {code}")


class ShapeOverflow(FrameError):
    def __init__(self, detail: str = "tensor shape overflow"):
        super().__init__(detail)


class TensorDataSizeMismatch(FrameError):
    def __init__(self, expected: int, actual: int):
        self.expected = expected
        self.actual = actual
        super().__init__(f"tensor data size mismatch: expected {expected} bytes, got {actual}")


class InvalidTensorName(FrameError):
    def __init__(self):
        super().__init__("tensor name is not valid UTF-8")


class TensorNameTooLong(FrameError):
    def __init__(self, length: int):
        self.length = length
        super().__init__(f"tensor name of {length} bytes exceeds 65535 bytes")


class IncompleteTensorHeader(FrameError):
    def __init__(self):
        super().__init__("incomplete tensor header")


class InvalidPadding(FrameError):
    def __init__(self):
        super().__init__("non-zero tensor padding byte")


# --------------------------------------------------------------------------
# Record layer crypto (transport.md sections 3.6 and 4)
# --------------------------------------------------------------------------
class CryptoError(CmlpError):
    """AEAD, key agreement or sequence failure."""


class SealFailed(CryptoError):
    def __init__(self, detail: str = "AEAD seal failed"):
        super().__init__(detail)


class OpenFailed(CryptoError):
    def __init__(self, detail: str = "AEAD open failed: authentication tag mismatch"):
        super().__init__(detail)


class NonceOverflow(CryptoError):
    def __init__(self):
        super().__init__("nonce overflow: 2^32 frames sent in this direction")


class SequenceError(CryptoError):
    """A frame whose sequence number is not exactly the next one expected."""


class SequenceReplay(SequenceError):
    """An old sequence number: a replayed, duplicated or reordered frame."""

    def __init__(self, received: int, expected: int):
        self.received = received
        self.expected = expected
        super().__init__(f"sequence replay: received {received}, expected {expected}")


class SequenceGap(SequenceError):
    """A sequence number ahead of the expected one: a frame was dropped or reordered."""

    def __init__(self, received: int, expected: int):
        self.received = received
        self.expected = expected
        super().__init__(
            f"sequence gap: received {received}, expected {expected} (a frame was dropped or reordered)"
        )


class NonContributoryKey(CryptoError):
    def __init__(self):
        super().__init__("non-contributory X25519 key: shared secret is all zero")


# --------------------------------------------------------------------------
# Attestation (transport.md section 5)
# --------------------------------------------------------------------------
class AttestError(CmlpError):
    """Attestation generation or verification failure."""


class GenerationFailed(AttestError):
    def __init__(self, detail: str):
        super().__init__(f"attestation generation failed: {detail}")


class VerificationFailed(AttestError):
    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"attestation verification failed: {detail}")


class Expired(AttestError):
    def __init__(self, detail: str = "attestation document expired"):
        super().__init__(detail)


class PublicKeyMismatch(AttestError):
    def __init__(self):
        super().__init__("attested public key does not match the hello public key")


class RoleMismatch(AttestError):
    """The peer's document does not bind the pipeline role this side expects."""

    def __init__(self, detail: str):
        super().__init__(f"role mismatch: {detail}")


class MissingField(AttestError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"attestation is missing field {name}")


# --------------------------------------------------------------------------
# Session (transport.md sections 3 and 4.6)
# --------------------------------------------------------------------------
class SessionError(CmlpError):
    """Handshake or channel-level failure."""


class HandshakeFailed(SessionError):
    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"handshake failed: {detail}")


class UnexpectedMessage(SessionError):
    def __init__(self, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"unexpected message: expected {expected}, got {actual}")


class Closed(SessionError):
    def __init__(self, detail: str = "connection closed by peer"):
        super().__init__(detail)


class Timeout(SessionError):
    def __init__(self, detail: str = "timeout"):
        super().__init__(detail)


class UnencryptedFrame(SessionError):
    def __init__(self):
        super().__init__("unencrypted frame received after the handshake")


class ReadBufferOverflow(SessionError):
    def __init__(self, size: int):
        self.size = size
        super().__init__(f"read buffer overflow: {size} bytes buffered")


class ChannelBroken(SessionError):
    """The channel failed earlier (a cut write, a fatal decode error) and is unusable."""

    def __init__(self, detail: str = "channel is broken by an earlier failure"):
        super().__init__(detail)


# --------------------------------------------------------------------------
# Pipeline (pipeline.md sections 1, 2 and 4)
# --------------------------------------------------------------------------
class PipelineError(CmlpError):
    """Manifest, control-protocol or pipeline failure."""


class ManifestError(PipelineError):
    def __init__(self, detail: str):
        super().__init__(f"manifest error: {detail}")


class ProtocolError(PipelineError):
    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"protocol error: {detail}")


class VersionMismatch(PipelineError):
    def __init__(self, expected: int, actual):
        self.expected = expected
        self.actual = actual
        super().__init__(f"control protocol version mismatch: expected {expected}, got {actual}")


class MessageTooLarge(PipelineError):
    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(f"message too large: {size} bytes exceeds the limit of {limit} bytes")


UNKNOWN_STAGE = 2**64 - 1  # usize::MAX in the reference: the failing stage is not known


class InputLimitExceeded(PipelineError):
    """A request's input exceeds what its activation spec and seq_len allow."""

    def __init__(self, detail: str):
        super().__init__(f"input limit exceeded: {detail}")


class InsecureConfiguration(PipelineError):
    """A configuration that would silently void a security promise (refused at start-up)."""

    def __init__(self, detail: str):
        super().__init__(detail)


class StageFailed(PipelineError):
    def __init__(self, stage_idx: int, reason: str):
        self.stage_idx = stage_idx
        self.reason = reason
        who = "unknown stage" if stage_idx == UNKNOWN_STAGE else f"stage {stage_idx}"
        super().__init__(f"{who} failed: {reason}")


class RequestFailed(PipelineError):
    def __init__(self, request_id: int, reason: str):
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"request {request_id} failed: {reason}")


class PipelineShutdown(PipelineError):
    def __init__(self):
        super().__init__("pipeline shutting down")


class PipelineTimeout(PipelineError):
    def __init__(self, detail: str):
        super().__init__(f"timeout: {detail}")


class Tainted(PipelineError):
    def __init__(self):
        super().__init__("pipeline tainted after unrecoverable timeout; re-initialize to continue")


class StageError(PipelineError):
    """An executor failure inside a stage (pipeline.md section 4)."""


class InitFailed(StageError):
    def __init__(self, detail: str):
        super().__init__(f"executor init failed: {detail}")


class ForwardFailed(StageError):
    def __init__(self, request_id: int, micro_batch: int, reason: str):
        self.request_id = request_id
        self.micro_batch = micro_batch
        self.reason = reason
        super().__init__(f"forward pass failed for request {request_id}, micro-batch {micro_batch}: {reason}")


# --------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------
class ModelError(CmlpError):
    """A model directory, config or weight file is missing or inconsistent."""


class PositionOverflow(ModelError):
    def __init__(self, past: int, new: int, limit: int):
        super().__init__(
            f"position overflow: {past} cached + {new} new positions exceeds n_positions {limit}"
        )


class InvalidModelInput(ModelError):
    """A forward-pass input has the wrong dtype, shape or values (e.g. an id >= vocab)."""


# --------------------------------------------------------------------------
# Generation (host-blind mode, cmlp.client; the client contract fixes these names)
# --------------------------------------------------------------------------
class GenerationError(PipelineError):  # base for what a client sees from a generation
    """A generation could not be completed."""


class InvalidRequestError(GenerationError):  # bad parameters (HTTP 400)
    """The request's parameters are invalid."""


class ContextTooLong(InvalidRequestError):  # prompt + max_tokens > max_seq_len (HTTP 400)
    """The prompt plus max_tokens exceeds the model's context."""


class ServerBusy(GenerationError):  # no slot and the queue is full (HTTP 503)
    """No generation slot is free and the host's queue is full."""


class PipelineUnavailable(GenerationError):  # host/stage down or link broken mid-generation (HTTP 503)
    """The host, a stage or a link is down, or broke during the generation."""


class ChatTemplateError(InvalidRequestError):
    """A chat template failed to render these messages (raise_exception, bad template)."""
