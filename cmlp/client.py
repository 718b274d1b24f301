"""The user's side of host-blind mode: verify stage 0, then generate over an end-to-end channel.

The host (``cmlp serve``) only forwards ciphertext: each ``generate`` call
opens a TCP connection to the host, reads its 8-byte status preamble, then
runs the attested SecureChannel handshake with stage 0 itself, checking
stage 0's attestation against the manifest's pinned measurements before
anything is sent.  The prompt, the parameters and every token travel inside
that channel.  Trusting stage 0's measurement covers the pipeline: each
enclave's manifest pins its neighbours.

Profiles: ``production`` needs real (Nitro) attestation and pinned
measurements for stage 0; ``development`` accepts mock attestation and
says so in a warning.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

from cmlp.attestation.factory import NoAttestation, make_verifier
from cmlp.errors import (
    AttestError,
    CmlpError,
    ContextTooLong,
    GenerationError,
    HandshakeFailed,
    InvalidRequestError,
    PipelineUnavailable,
    ProtocolError,
    ServerBusy,
    Timeout,
)
from cmlp.hostblind import protocol as P
from cmlp.hostblind.host import PREAMBLE_MAGIC, PREAMBLE_SIZE, STATUS_BUSY, STATUS_OK, STATUS_UNAVAILABLE
from cmlp.hostblind.params import MAX_PROMPT_BYTES, MAX_PROMPT_IDS, SamplingParams
from cmlp.manifest import Manifest
from cmlp.transport import Data, SecureChannel, SecurityProfile, SessionConfig, sockets

log = logging.getLogger(__name__)

__all__ = ["Client", "SamplingParams", "TokenEvent", "Finished", "ModelInfo"]

_seq_counter = itertools.count(1)
_seq_lock = threading.Lock()


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str  # newly decoded text for this token ("" while a UTF-8 char is
    # incomplete; held-back stop-sequence prefixes come later)


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "length" | "eos" | "stop"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    model_name: str  # the manifest's model_name
    max_seq_len: int  # context limit: prompt + generated tokens
    chat_template: Optional[str]  # Jinja2 source from tokenizer_config.json, if the model has one
    bos_token: Optional[str]
    eos_token: Optional[str]


def _next_seq() -> int:
    with _seq_lock:
        return next(_seq_counter)


class Client:
    def __init__(
        self,
        connect: str,
        manifest: Union[Manifest, str, "os.PathLike"],
        *,
        profile: str = "development",
        timeout: float = 30.0,
        attestation: Optional[str] = None,
        nitro_root_pem: Optional[bytes] = None,
        bind_roles: bool = True,
        tdx_collateral_dir: Optional[str] = None,
        tee_policy: str = "production",
    ):
        # connect: "HOST:PORT" of `cmlp serve` on the (untrusted) host; no I/O happens here
        self.address = sockets.parse_endpoint(connect)
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        if not self.manifest.host_blind:
            raise InvalidRequestError(
                "the manifest has no host_blind section: it describes a "
                "reference-mode pipeline (use cmlp-orch)"
            )
        if profile not in ("development", "production"):
            raise InvalidRequestError(f"profile must be development or production, got {profile!r}")
        if timeout is None or timeout <= 0:
            raise InvalidRequestError("timeout must be > 0")
        self.profile = SecurityProfile(profile)
        self.timeout = float(timeout)
        kind = attestation or ("nitro" if self.profile is SecurityProfile.PRODUCTION else "mock")
        if self.profile is SecurityProfile.PRODUCTION and kind == "mock":
            raise InvalidRequestError(
                "the production profile needs real attestation (mock documents can be forged by anyone)"
            )
        pins = self.manifest.stages[0].measurements()
        if self.profile is SecurityProfile.PRODUCTION:
            if not pins:
                raise InvalidRequestError(
                    "the production profile needs stage 0's expected_measurements in the manifest"
                )
            self.session = SessionConfig(
                expected_measurements=pins, io_timeout=self.timeout, handshake_timeout=self.timeout
            )
        else:
            if kind == "mock":
                log.warning(
                    "development profile: stage 0's mock attestation proves nothing; "
                    "the host could impersonate it (use --profile production with "
                    "real attestation for confidentiality)"
                )
            self.session = SessionConfig.development(
                expected_measurements=pins, io_timeout=self.timeout, handshake_timeout=self.timeout
            )
        if bind_roles:
            # stage 0 must attest that it is stage 0 of this pipeline (not another stage the
            # host forwarded the connection to, nor another pipeline with the same pins)
            from cmlp.attestation.role import Role

            self.session = self.session.replace(peer_role=Role(0, self.manifest.pipeline_digest()))
        self.verifier = make_verifier(
            kind, nitro_root_pem, tdx_collateral_dir=tdx_collateral_dir, tee_policy=tee_policy
        )
        self._closed = False
        self._info: Optional[ModelInfo] = None

    def model_info(self) -> ModelInfo:
        """The manifest's name and context, plus the tokenizer's metadata from attested stage 0."""
        if self._info is None:
            channel = self._open()
            ep = P.Endpoint(P.CLIENT)
            seq = _next_seq()
            try:
                try:
                    channel.send(ep.send(P.Info(seq)))
                except CmlpError as exc:
                    raise PipelineUnavailable(f"asking stage 0 for the model info failed: {exc}") from exc
                ev = self._recv(channel, ep)
            finally:
                channel.close()
            if isinstance(ev, P.Error):
                raise _error(ev)
            if not isinstance(ev, P.InfoReply) or ev.seq != seq:
                raise PipelineUnavailable("stage 0 did not answer the model info request")
            m = self.manifest
            self._info = ModelInfo(
                model_name=m.model_name, max_seq_len=m.activation_spec.max_seq_len, **ev.body
            )
        return self._info

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one generation -------------------------------------------------------------------
    def _open(self) -> SecureChannel:
        try:
            sock = sockets.connect(self.address, timeout=self.timeout)
        except OSError as exc:
            raise PipelineUnavailable(f"cannot reach the host at {self.address}: {exc}") from None
        try:
            sock.settimeout(self.timeout)
            head = b""
            while len(head) < PREAMBLE_SIZE:
                chunk = sock.recv(PREAMBLE_SIZE - len(head))
                if not chunk:
                    raise PipelineUnavailable(
                        "the host closed the connection before forwarding it to stage 0"
                    )
                head += chunk
            sock.settimeout(None)
        except TimeoutError:  # socket.timeout is its alias
            sock.close()
            raise PipelineUnavailable(
                f"the host did not forward the connection within {self.timeout} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise PipelineUnavailable(f"host connection failed: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if head[:-1] != PREAMBLE_MAGIC:
            sock.close()
            raise PipelineUnavailable("the host's reply is not a cmlp serve preamble")
        status = head[-1]
        if status != STATUS_OK:
            sock.close()
            if status == STATUS_BUSY:
                raise ServerBusy("the server is busy (no free slot and its queue is full)")
            if status == STATUS_UNAVAILABLE:
                raise PipelineUnavailable("the host reports the pipeline unavailable")
            raise PipelineUnavailable(f"unknown host status {status}")
        try:
            return SecureChannel.connect(sock, NoAttestation(), self.verifier, self.session)
        except HandshakeFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, AttestError):
                raise cause from exc
            raise PipelineUnavailable(f"handshake with stage 0 failed: {exc}") from exc
        except AttestError:
            raise
        except CmlpError as exc:
            raise PipelineUnavailable(f"handshake with stage 0 failed: {exc}") from exc

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        params: SamplingParams,
        *,
        on_prompt_ids: Optional[Callable[[list], None]] = None,
    ) -> Iterator[Union[TokenEvent, Finished]]:
        """Yield TokenEvents as they arrive, then one Finished (see the module doc).

        ``on_prompt_ids`` (a cmlp addition) receives the prompt's token ids as
        stage 0 tokenized them, before the first token.
        """
        if self._closed:
            raise InvalidRequestError("client is closed")
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        params.validate()
        if isinstance(prompt, str):
            if len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
                raise InvalidRequestError(f"prompt longer than {MAX_PROMPT_BYTES} bytes")
            body = {"prompt": prompt, "params": params.to_json()}
        else:
            ids = list(prompt)
            if (
                not ids
                or len(ids) > MAX_PROMPT_IDS
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids)
            ):
                raise InvalidRequestError("prompt ids must be a non-empty list of u32 ids")
            limit = self.manifest.activation_spec.max_seq_len
            if len(ids) + params.max_tokens > limit:
                raise ContextTooLong(
                    f"prompt ({len(ids)} tokens) + max_tokens "
                    f"({params.max_tokens}) exceeds the context of {limit}"
                )
            body = {"prompt_ids": ids, "params": params.to_json()}
        return self._stream(body, on_prompt_ids)

    def _stream(self, body: dict, on_prompt_ids) -> Iterator[Union[TokenEvent, Finished]]:
        channel = self._open()
        ep = P.Endpoint(P.CLIENT)
        seq = _next_seq()
        done = False
        received = 0
        try:
            try:
                channel.send(ep.send(P.Generate(seq, body)))
            except CmlpError as exc:
                raise PipelineUnavailable(f"sending the request to stage 0 failed: {exc}") from exc
            while True:
                ev = self._recv(channel, ep)
                if ev.seq != seq:
                    raise PipelineUnavailable(f"stage 0 answered sequence {ev.seq}, not {seq}")
                if isinstance(ev, P.Started):
                    if on_prompt_ids is not None:
                        on_prompt_ids(list(ev.prompt_ids))
                elif isinstance(ev, P.Token):
                    received += 1
                    yield TokenEvent(ev.token_id, ev.text)
                elif isinstance(ev, P.Finished):
                    done = True
                    if ev.completion_tokens != received:
                        raise PipelineUnavailable("stage 0's final count does not match the tokens received")
                    yield Finished(ev.reason, ev.prompt_tokens, ev.completion_tokens)
                    return
                elif isinstance(ev, P.Error):
                    done = True
                    raise _error(ev)
        finally:
            if not done and not channel.closed:
                try:  # early close: free stage 0's slot
                    channel.send(ep.send(P.Cancel(seq)), timeout=1.0)
                except (CmlpError, ProtocolError):
                    pass
            channel.close()

    def _recv(self, channel: SecureChannel, ep: P.Endpoint):
        try:
            msg = channel.recv(timeout=self.timeout)
        except Timeout:
            raise PipelineUnavailable(
                f"no message from stage 0 within {self.timeout} s (the host or a stage stalled)"
            ) from None
        except CmlpError as exc:
            raise PipelineUnavailable(f"the channel to stage 0 failed: {exc}") from exc
        if not isinstance(msg, Data):
            raise PipelineUnavailable(f"stage 0 sent {type(msg).__name__}, not a message")
        try:
            return ep.receive(msg.payload)
        except ProtocolError as exc:
            raise PipelineUnavailable(f"stage 0 sent an invalid message: {exc}") from exc


def _error(ev: P.Error) -> GenerationError:
    if ev.code == P.ERR_CONTEXT:
        return ContextTooLong(ev.message)
    if ev.code == P.ERR_INVALID:
        return InvalidRequestError(ev.message)
    if ev.code == P.ERR_BUSY:
        return ServerBusy(ev.message)
    if ev.code == P.ERR_UNAVAILABLE:
        return PipelineUnavailable(ev.message)
    return GenerationError(ev.message)
