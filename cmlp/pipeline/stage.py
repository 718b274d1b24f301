"""The stage runtime: control phase, data phase, request loop (pipeline.md 2.5-2.6).

One thread runs a session as an event loop.  While a request waits for its
input, the stage keeps watching the control channel, so Ping, AbortRequest
and Shutdown are handled mid-request; during a forward pass (GIL released)
control messages wait until it ends.

Resolutions of the reference's open points (pipeline.md, Ambiguities):
* the cache-clear sentinel travels ahead of ``hidden_states`` to every stage
  (the executor re-emits it), so persistent stages serve session after session;
* a rejected or failed request still consumes the rest of its input groups
  (until END or ERR), so data_in never carries stale tensors into the next
  request;
* the Init's stage spec must agree with the stage's own manifest on every
  security-relevant field (layers, hashes, measurements): the host cannot
  widen what the enclave accepts;
* data-channel peers are pinned to *their* measurements (the previous and
  next stage's), not to the stage's own;
* AbortRequest applies only to the request it names; a StartRequest that
  arrives mid-request is queued, never dropped.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, List, Optional, Tuple

from cmlp import strict_json, trace
from cmlp.attestation.factory import refuse_mock_in_production
from cmlp.attestation.role import Role
from cmlp.deadline import Deadline
from cmlp.errors import (
    UNKNOWN_STAGE,
    ChannelBroken,
    Closed,
    CmlpError,
    CryptoError,
    FrameError,
    InitFailed,
    InputLimitExceeded,
    MessageTooLarge,
    PipelineError,
    ProtocolError,
    SessionError,
    StageError,
    StageFailed,
    Timeout,
    VersionMismatch,
)
from cmlp.manifest import ActivationSpec, Manifest, StageSpec
from cmlp.pipeline import control as C
from cmlp.pipeline.acceptor import Acceptor
from cmlp.transport import Data, SecureChannel, SessionConfig, ShutdownMessage, TensorMessage, sockets
from cmlp.transport.config import RetryPolicy, SecurityProfile
from cmlp.transport.sockets import Endpoint, VsockAddr
from cmlp.transport.wire import DType, Tensor

log = logging.getLogger(__name__)

END = C.END
ERR = C.ERR
WATCH_SLICE = 0.05  # seconds between control checks while waiting for input


@dataclass
class StageConfig:
    provider: object
    verifier: object
    session: SessionConfig = field(default_factory=SessionConfig.development)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_control_message_bytes: int = C.DEFAULT_MAX_CONTROL_MESSAGE_BYTES
    data_setup_timeout: float = 60.0  # accepting data_in / reaching data_out
    input_timeout: float = 300.0  # a request waiting for its input (cmlp addition)
    persistent: bool = False  # serve one orchestrator session after another
    host_unattested: bool = False  # the orchestrator presents no attestation
    hostblind: object = None  # cmlp.hostblind.stage_loop.HostBlindOptions
    # issue 10: no idle or half-open connection may lock the stage
    handshake_timeout: float = 10.0  # at most this per incoming handshake
    first_message_timeout: float = 30.0  # Init must follow the control handshake within it
    max_pending_handshakes: int = 8  # connections being established at once, per port
    # per micro-batch input cap: tensors, and bytes = max_batch x seq_len x one row of the
    # activation spec (hidden_dim x max(itemsize, 4): ids and F32 hidden states both fit)
    max_input_tensors: int = 4
    max_batch: int = 8
    # attest this stage's role (index + pipeline digest) and check every peer's; off only
    # for interop with the reference's peers, which bind no role (docs/attestation.md)
    bind_roles: bool = True


class SessionEnded(Exception):
    """The orchestrator said Shutdown: end this session cleanly."""


class OrchestratorGone(Exception):
    """The control channel closed under us: the orchestrator was stopped or died.

    Not a fault of this stage: the session ends cleanly (exit 0, or the next
    session for a persistent stage) with one line saying so.  ``goodbye``: it
    sent a transport Shutdown first (``Orchestrator.abandon``, e.g. on Ctrl-C).
    """

    def __init__(self, why: str, goodbye: bool = False):
        super().__init__(why)
        self.goodbye = goodbye


# errors caused by what the orchestrator sent: never explained back to it
_PEER_FAULTS = (ProtocolError, VersionMismatch, MessageTooLarge, FrameError, CryptoError)
GONE_GRACE = 0.25  # seconds to look for the orchestrator's goodbye after a broken link


class _Control:
    """Typed control messages over a SecureChannel (stage side)."""

    def __init__(self, channel: SecureChannel, limit: int):
        self.channel = channel
        self.limit = limit

    def send(self, msg) -> None:
        try:
            self.channel.send(msg.encode())
        except (Closed, ChannelBroken) as exc:
            raise OrchestratorGone(str(exc)) from exc

    def recv(self, timeout: Optional[float] = None):
        try:
            msg = self.channel.recv(timeout)
        except (Closed, ChannelBroken) as exc:
            raise OrchestratorGone(str(exc)) from exc
        if isinstance(msg, Data):
            return C.decode_orchestrator_msg(msg.payload, self.limit)
        if isinstance(msg, ShutdownMessage):
            raise OrchestratorGone("it left without waiting for the stages (interrupted)", goodbye=True)
        raise ProtocolError(f"expected Data on control channel, got {type(msg).__name__}")


def _json_object(text: str) -> dict:
    """A nested spec of an Init: strict JSON (duplicate keys, deep nesting refused), an object."""
    obj = strict_json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _discard_control(result) -> None:
    channel, _ = result
    if channel is not None:
        channel.close()


class StageWorker:
    """Serves one stage of a manifest: ``bind()`` then ``serve()``."""

    def __init__(
        self,
        manifest: Manifest,
        stage_idx: int,
        executor,
        config: StageConfig,
        data_out_target: Optional[Endpoint] = None,
    ):
        refuse_mock_in_production(
            config.session.security_profile is SecurityProfile.PRODUCTION, config.provider, config.verifier
        )
        self.manifest = manifest
        self.spec = manifest.stage(stage_idx)
        self._pipeline_digest = manifest.pipeline_digest()
        self.idx = stage_idx
        self.executor = executor
        self.config = config
        self.data_out_target = data_out_target or self.spec.endpoint.data_out.endpoint
        if data_out_target is not None and data_out_target != self.spec.endpoint.data_out.endpoint:
            log.warning(
                "stage %d: --data-out-target %s differs from the manifest's data_out %s",
                stage_idx,
                data_out_target,
                self.spec.endpoint.data_out.endpoint,
            )
        self.control_listener: Optional[socket.socket] = None
        self.data_listener: Optional[socket.socket] = None
        self.client_listener: Optional[socket.socket] = None  # host-blind mode, stage 0
        self.sessions = 0
        self.last_error: Optional[BaseException] = None  # of the last failed session
        self._initialized_spec: Optional[Tuple[Tuple[Any, ...], ActivationSpec]] = None
        self._stop = threading.Event()
        self._control_acceptor: Optional[Acceptor] = None

    # -- listening -----------------------------------------------------------
    @staticmethod
    def _bind_endpoint(endpoint: Endpoint) -> socket.socket:
        if isinstance(endpoint, VsockAddr):  # enclaves listen on any CID
            endpoint = VsockAddr(sockets.VSOCK_CID_ANY, endpoint.port)
        return sockets.listen(endpoint)

    def bind(self) -> None:
        self.control_listener = self._bind_endpoint(self.spec.endpoint.control.endpoint)
        self.data_listener = self._bind_endpoint(self.spec.endpoint.data_in.endpoint)
        client = self.manifest.client_endpoint  # set = host-blind mode
        if client is not None and self.idx == 0:
            self.client_listener = self._bind_endpoint(client.endpoint)

    def close(self) -> None:
        self._stop.set()
        if self._control_acceptor is not None:
            self._control_acceptor.close()
        for lst in (self.control_listener, self.data_listener, self.client_listener):
            if lst is not None:
                try:
                    lst.close()
                except OSError:
                    pass

    def load(self) -> None:
        """Initialise the executor from the stage's own manifest, before any session."""
        activation = self.manifest.activation_spec
        self.executor.init(self.spec, activation, self.manifest.num_stages)
        self._initialized_spec = (self.spec.security_fields(), activation)

    # -- sessions ------------------------------------------------------------
    def serve(self) -> None:
        """Run sessions until Shutdown (or forever with ``persistent``)."""
        if self.control_listener is None:
            self.bind()
        assert self.control_listener is not None, "bind() sets it"
        cfg = self.config
        self._control_acceptor = Acceptor(
            self.control_listener,
            self._establish_control,
            discard=_discard_control,
            on_error=self._handshake_failed("control"),
            max_in_flight=cfg.max_pending_handshakes,
            name=f"stage{self.idx}-control",
        )
        try:
            while not self._stop.is_set():
                try:
                    self.run_session()
                except (CmlpError, OSError) as exc:
                    if self._stop.is_set():
                        return
                    self.last_error = exc
                    if not self.config.persistent:
                        raise
                    log.warning("stage %d: session ended with an error: %s", self.idx, exc)
                if not self.config.persistent:
                    return
        finally:
            self._control_acceptor.close()

    def _session_config(self, peer_stage: Optional[int]) -> SessionConfig:
        """Pins for a channel whose peer is ``peer_stage`` (None: the host orchestrator)."""
        base = self.config.session
        if self.config.bind_roles:
            digest = self._pipeline_digest
            base = base.replace(
                own_role=Role(self.idx, digest),
                peer_role=Role.orchestrator(digest) if peer_stage is None else Role(peer_stage, digest),
            )
        if peer_stage is None:
            return (
                base.replace(expected_measurements=None, allow_unattested_peer=self.config.host_unattested)
                if self.config.host_unattested
                else base
            )
        # A link between stages is always mutually attested: an empty document is refused
        # there even when the host may be unattested (or the base config allows it), since
        # the host relays that link and could otherwise stand in for the neighbour.
        return base.replace(
            expected_measurements=self.manifest.stages[peer_stage].measurements()
            or base.expected_measurements,
            allow_unattested_peer=False,
        )

    def _handshake_failed(self, port: str):
        def report(exc: BaseException) -> None:
            self.last_error = exc
            log.warning("stage %d: %s handshake failed: %s", self.idx, port, exc)

        return report

    def _incoming_config(self, peer_stage: Optional[int]) -> SessionConfig:
        """As _session_config, with the stage's own (shorter) handshake deadline."""
        config = self._session_config(peer_stage)
        return config.replace(handshake_timeout=min(config.handshake_timeout, self.config.handshake_timeout))

    def _establish_control(self, sock):
        """Handshake, then the first control message, each under its deadline.

        Runs in an Acceptor thread, so a connection that stays silent costs one
        slot for at most these deadlines and never blocks another one.  A failed
        handshake raises (logged, the connection is forgotten).  A failure after
        the handshake - no Init in time, a malformed first message - is a session
        that failed: it is returned as ``(None, error)``, so a one-shot stage ends
        with that error as before and a persistent one logs it and goes on.
        """
        cfg = self.config
        channel = SecureChannel.accept(sock, cfg.provider, cfg.verifier, self._incoming_config(None))
        try:
            msg = _Control(channel, cfg.max_control_message_bytes).recv(cfg.first_message_timeout)
            if not isinstance(msg, C.Init):
                raise ProtocolError(f"expected Init, got {C.describe(msg)}")
            return channel, msg
        except Timeout:
            channel.close()
            return None, Timeout(
                f"no control message within {cfg.first_message_timeout} s after the handshake"
            )
        except SessionEnded:
            channel.close()
            return None, ProtocolError("Shutdown before Init")
        except OrchestratorGone as gone:  # closed before Init: a session that ended
            channel.close()
            return None, gone
        except (CmlpError, OSError) as exc:
            channel.close()
            return None, exc
        except BaseException:
            channel.close()
            raise

    def _accept_control(self):
        """The next control connection that completed its handshake and sent Init.

        Handshakes run concurrently in the acceptor: a port probe, a peer with
        the wrong attestation or an idle connection cannot stop the stage.
        """
        listener = self.control_listener
        assert listener is not None, "StageWorker.bind() comes first"
        acceptor = self._control_acceptor
        assert acceptor is not None, "serve() starts it"
        while True:
            if self._stop.is_set():
                raise Closed("the stage is closing")
            try:
                return acceptor.get(timeout=0.5)
            except Timeout:
                continue

    def run_session(self) -> None:
        control, init = self._accept_control()
        if control is None:
            if isinstance(init, OrchestratorGone):
                self._say_orchestrator_left(f"its connection closed before Init: {init}")
                return
            raise init  # the connection failed after its handshake
        cfg = self.config
        ctl = _Control(control, cfg.max_control_message_bytes)
        channels = [control]
        self.sessions += 1
        log.info(
            "stage %d: control session %d (peer attestation: %s)",
            self.idx,
            self.sessions,
            control.peer_attestation.platform,
        )
        try:
            try:
                num_stages, activation = self._control_phase(ctl, init)
                begin = getattr(self.executor, "begin_session", None)
                if begin is not None:
                    begin()  # every session starts from an empty, wiped cache
                data_in, data_out = self._data_phase(ctl, num_stages)
            except (CmlpError, OSError) as exc:
                self._report_setup_failure(control, exc)
                raise
            channels += [ch for ch in (data_in, data_out) if ch is not None]
            ctl.send(C.DataChannelsReady(self.idx))
            if self.manifest.host_blind:
                from cmlp.hostblind.stage_loop import run_host_blind

                run_host_blind(self, ctl, data_in, data_out, activation)
            else:
                _RequestLoop(self, ctl, data_in, data_out, activation).run()
        except SessionEnded:
            log.info("stage %d: session ended by the orchestrator", self.idx)
        except OrchestratorGone as gone:
            self._say_orchestrator_left(str(gone) if gone.goodbye else f"its connection closed: {gone}")
        except (CmlpError, OSError):
            # A broken data link may just be the orchestrator leaving (Ctrl-C): it says
            # goodbye on control before it drops its channels.
            if not self._orchestrator_said_goodbye(ctl):
                raise
            self._say_orchestrator_left("it left without waiting for the stages (interrupted)")
        finally:
            for ch in channels:
                ch.close()

    def _say_orchestrator_left(self, why: str) -> None:
        then = "waiting for the next session" if self.config.persistent else "exiting"
        log.warning("stage %d: the orchestrator went away (%s); %s", self.idx, why, then)

    def _orchestrator_said_goodbye(self, ctl: _Control) -> bool:
        """After a failure: did the orchestrator end the session (Shutdown) or vanish?"""
        deadline = time.monotonic() + GONE_GRACE
        while not ctl.channel.closed:
            try:
                msg = ctl.recv(timeout=max(0.01, deadline - time.monotonic()))
            except OrchestratorGone as gone:
                return gone.goodbye  # a bare close is no goodbye: keep the link's own error
            except (CmlpError, OSError, SessionEnded):
                return False
            if isinstance(msg, C.Shutdown):
                return True
        return False

    def _report_setup_failure(self, control: SecureChannel, exc: BaseException) -> None:
        """Tell the orchestrator why this stage cannot join (an Error frame), then drop it.

        Only the stage's own reasons (model, weights, hashes, its data links); a peer
        that broke the protocol on control just gets the closed connection.
        """
        if control.closed or isinstance(exc, _PEER_FAULTS):
            return
        try:
            control.send_error(f"stage {self.idx}: {exc}", timeout=1.0)
        except (CmlpError, OSError):
            pass

    # -- control phase ---------------------------------------------------------
    def _control_phase(self, ctl: _Control, msg):
        if not isinstance(msg, C.Init):
            raise ProtocolError(f"expected Init, got {C.describe(msg)}")
        try:
            spec = StageSpec.from_json(_json_object(msg.stage_spec_json))
        except (ValueError, CmlpError) as exc:
            raise ProtocolError(f"invalid stage_spec: {exc}") from None
        try:
            activation = ActivationSpec.from_json(_json_object(msg.activation_spec_json))
        except (ValueError, CmlpError) as exc:
            raise ProtocolError(f"invalid activation_spec: {exc}") from None
        # every Init, every time (also when the shard is already loaded): the host cannot
        # widen what this stage accepts - the activation spec is its own manifest's
        own = self.manifest.activation_spec
        if activation != own:
            raise ProtocolError(
                f"Init activation_spec {activation.to_json()} differs from this stage's "
                f"manifest {own.to_json()}"
            )
        if not self.spec.admits_init(spec):
            raise ProtocolError(
                f"Init for stage {spec.stage_idx} layers [{spec.layer_start}, {spec.layer_end}) "
                f"does not match this stage's manifest (stage {self.idx} layers "
                f"[{self.spec.layer_start}, {self.spec.layer_end}); the same hashes and at "
                "least its measurements are required)"
            )
        if msg.num_stages != self.manifest.num_stages:
            raise ProtocolError(
                f"Init says {msg.num_stages} stages, the manifest has {self.manifest.num_stages}"
            )
        key = (self.spec.security_fields(), activation)
        if self._initialized_spec != key:
            self.executor.init(self.spec, activation, msg.num_stages)
            self._initialized_spec = key
        self._check_weight_hashes()
        ctl.send(C.Ready(self.idx))
        while True:  # a loop, never recursion: any number of Pings is fine
            msg = ctl.recv()
            if isinstance(msg, C.Ping):
                ctl.send(C.Pong(msg.seq))
            elif isinstance(msg, C.EstablishDataChannels):
                return self.manifest.num_stages, activation
            else:
                raise ProtocolError(f"expected EstablishDataChannels, got {C.describe(msg)}")

    def _check_weight_hashes(self) -> None:
        declared = self.spec.weight_hashes
        if self.spec.require_weight_hashes and not declared:
            raise InitFailed("manifest requires weight hashes but none were declared")
        if not declared:
            return
        actual = list(self.executor.weight_hashes())
        if len(actual) != len(declared):
            raise InitFailed(
                f"weight hash count mismatch: manifest declares {len(declared)} "
                f"hashes, executor returned {len(actual)}"
            )
        for i, (want, got) in enumerate(zip(declared, actual, strict=True)):
            if want != got:
                raise InitFailed(f"weight hash mismatch at index {i}: expected {want}, got {got}")

    # -- data phase ----------------------------------------------------------
    def _data_phase(self, ctl: _Control, num_stages: int):
        """Reach data_out, then take data_in, both while watching the control channel.

        TCP and vsock connections complete in the listener's backlog, so the
        downstream connect needs no concurrent accept.  The handshakes then run
        upstream first (the chain orchestrator -> s0 -> ... -> orchestrator).
        If the orchestrator goes away during set-up the stage gives up at once,
        so its listeners are free for the next session.
        """
        cfg = self.config
        deadline = Deadline(cfg.data_setup_timeout)
        up_peer = None if self.idx == 0 else self.idx - 1
        down_peer = None if self.idx == num_stages - 1 else self.idx + 1
        if self.manifest.host_blind:
            # a ring: the last stage's data_out is the feedback link to stage 0's data_in
            if num_stages == 1:
                return None, None  # one stage samples itself: no data links
            up_peer, down_peer = (self.idx - 1) % num_stages, (self.idx + 1) % num_stages
        out_sock = self._connect_downstream(ctl, deadline)
        if self.manifest.host_blind and self.idx == 0:
            # stage 0 starts the handshake chain (s0 -> s1 -> ... -> last -> s0)
            try:
                data_out = SecureChannel.connect(
                    out_sock, cfg.provider, cfg.verifier, self._session_config(down_peer)
                )
            except BaseException:
                out_sock.close()
                raise
            try:
                data_in = self._accept_upstream(ctl, deadline, self._session_config(up_peer))
            except BaseException:
                data_out.close()
                raise
            return data_in, data_out
        try:
            data_in = self._accept_upstream(ctl, deadline, self._session_config(up_peer))
        except BaseException:
            out_sock.close()
            raise
        try:
            data_out = SecureChannel.connect(
                out_sock, cfg.provider, cfg.verifier, self._session_config(down_peer)
            )
        except BaseException:
            data_in.close()
            raise
        return data_in, data_out

    def _accept_upstream(self, ctl: _Control, deadline: Deadline, config: SessionConfig):
        """The first data_in connection that completes the handshake.

        Handshakes run concurrently (bounded): a connection that fails or stays
        silent (left over from a dead session, or a host probing the port) is
        dropped without delaying the real upstream peer.
        """
        cfg = self.config
        config = config.replace(handshake_timeout=min(config.handshake_timeout, cfg.handshake_timeout))
        assert self.data_listener is not None, "StageWorker.bind() comes first"
        acceptor = Acceptor(
            self.data_listener,
            lambda sock: SecureChannel.accept(sock, cfg.provider, cfg.verifier, config),
            discard=lambda ch: ch.close(),
            on_error=self._handshake_failed("data_in"),
            max_in_flight=cfg.max_pending_handshakes,
            max_ready=1,
            name=f"stage{self.idx}-data_in",
        )
        try:
            while True:
                try:
                    return acceptor.get(timeout=0.2)
                except Timeout:
                    self._check_control(ctl)
                    if deadline.expired():
                        raise Timeout(
                            f"no upstream connection on data_in within {self.config.data_setup_timeout} s"
                        ) from None
        finally:
            acceptor.close()

    def _connect_downstream(self, ctl: _Control, deadline: Deadline):
        """Connect data_out with the retry policy, checking control between attempts."""

        def pause(seconds: float) -> None:
            until = Deadline(seconds)
            while not until.expired():
                self._check_control(ctl)
                time.sleep(min(0.05, until.remaining()))

        return sockets.connect_retry(
            self.data_out_target, self.config.retry, timeout=2.0, sleep=pause, deadline=deadline
        )

    @staticmethod
    def _check_control(ctl: _Control) -> None:
        """Raise if the orchestrator closed the control channel (or spoke out of turn)."""
        if ctl.channel.pending():
            try:
                msg = ctl.recv(timeout=0.5)
            except Timeout:
                return
            raise ProtocolError(f"unexpected {C.describe(msg)} during data channel set-up")


class _LinkLost(Exception):
    """A data channel failed: ``side`` is "data_in" or "data_out"."""

    def __init__(self, side: str, exc: BaseException):
        super().__init__(f"{side} closed: {exc}")
        self.side = side
        self.exc = exc


class _RequestLoop:
    """The process loop of one session (pipeline.md 2.6, stage side)."""

    def __init__(
        self,
        worker: StageWorker,
        ctl: _Control,
        data_in: SecureChannel,
        data_out: SecureChannel,
        activation: ActivationSpec,
    ):
        self.w = worker
        self.ctl = ctl
        self.data_in = data_in
        self.data_out = data_out
        self.activation = activation
        self.queued: Deque[C.StartRequest] = collections.deque()
        # trace event names built once, not per request
        self.ev = {
            k: f"stage{worker.idx}.{k}" for k in ("start_request", "input", "forward_done", "output_sent")
        }
        self.current: Optional[int] = None
        self.aborted: Optional[str] = None
        self.limit_error: Optional[InputLimitExceeded] = None
        self.shutdown = False

    def run(self) -> None:
        while True:
            msg = self.queued.popleft() if self.queued else self.ctl.recv()
            if isinstance(msg, C.StartRequest):
                self.handle(msg)
                if self.shutdown:
                    break
            elif isinstance(msg, C.Ping):
                self.ctl.send(C.Pong(msg.seq))
            elif isinstance(msg, C.AbortRequest):
                log.warning("stage %d: AbortRequest %d with no request running", self.w.idx, msg.request_id)
            elif isinstance(msg, C.Shutdown):
                break
            else:
                raise ProtocolError(f"unexpected message in process loop: {C.describe(msg)}")
        self.ctl.send(C.ShuttingDown(self.w.idx))
        raise SessionEnded()

    # -- while a request runs: watch the control channel -----------------------
    def _watch_control(self) -> None:
        while self.ctl.channel.pending():
            try:
                msg = self.ctl.recv(timeout=1.0)
            except Timeout:
                return  # a partial frame: keep it for later
            if isinstance(msg, C.Ping):
                self.ctl.send(C.Pong(msg.seq))
            elif isinstance(msg, C.AbortRequest):
                if msg.request_id == self.current:
                    self.aborted = msg.reason
                else:
                    log.warning(
                        "stage %d: AbortRequest for %d while running %s",
                        self.w.idx,
                        msg.request_id,
                        self.current,
                    )
            elif isinstance(msg, C.Shutdown):
                self.shutdown = True
            elif isinstance(msg, C.StartRequest):
                self.queued.append(msg)
            else:
                raise ProtocolError(f"unexpected message during a request: {C.describe(msg)}")

    def _recv_input(self):
        """One data_in message, watching control while waiting."""
        deadline = Deadline(self.w.config.input_timeout)
        while True:
            if self.aborted is not None or self.shutdown:
                return None
            try:
                return self.data_in.recv(timeout=WATCH_SLICE)
            except Timeout:
                self._watch_control()
                if deadline.expired():
                    raise Timeout(
                        f"no input for request {self.current} within {self.w.config.input_timeout} s"
                    ) from None
            except (SessionError, CryptoError, FrameError) as exc:
                raise _LinkLost("data_in", exc) from exc

    def _send_output(self, outputs) -> None:
        """One micro-batch downstream: every tensor, then END, in one write."""
        try:
            for t in outputs:
                self.data_out.send_tensor(t, more=True)
            self.data_out.send(END)
        except (SessionError, CryptoError) as exc:
            raise _LinkLost("data_out", exc) from exc

    def _input_limits(self, seq_len: int):
        """(tensor count, bytes) one micro-batch may hold, from the activation spec."""
        cfg, a = self.w.config, self.activation
        row = a.hidden_dim * max(DType[a.dtype].itemsize, 4)
        return cfg.max_input_tensors, cfg.max_batch * max(seq_len, 1) * row

    def _read_group(self, limits=None):
        """Tensors until END: ``(tensors, "END")``, ``(None, "ERR")`` or ``(None, None)`` if cut.

        With ``limits`` (count, bytes), a group that exceeds them is read to its
        END but not kept: ``(None, "LIMIT")``, and ``self.limit_error`` says why.
        Without limits (draining a failed request) nothing is kept at all.
        """
        tensors: Optional[List[Tensor]] = [] if limits is not None else None
        count = size = 0
        while True:
            msg = self._recv_input()
            if msg is None:
                return None, None
            if isinstance(msg, TensorMessage):
                count += 1
                size += msg.tensor.nbytes
                if tensors is not None:
                    if count > limits[0] or size > limits[1]:
                        self.limit_error = InputLimitExceeded(
                            f"{count} tensors / {size} bytes in one micro-batch; this request "
                            f"allows {limits[0]} tensors / {limits[1]} bytes"
                        )
                        tensors = None  # freed now; the rest is read and dropped
                    else:
                        tensors.append(msg.tensor)
            elif isinstance(msg, Data) and msg.payload == END:
                if tensors is None and limits is not None:
                    return None, "LIMIT"
                return tensors, "END"
            elif isinstance(msg, Data) and msg.payload == ERR:
                return None, "ERR"
            elif isinstance(msg, ShutdownMessage):
                raise PipelineError("pipeline shutting down (transport Shutdown on data_in)")
            else:
                raise ProtocolError(f"unexpected message on data_in: {type(msg).__name__}")

    def _drain_inputs(self, groups: int) -> None:
        """Consume the rest of a failed request's input so data_in stays in sync."""
        for _ in range(groups):
            _, status = self._read_group()
            if status != "END":
                return

    def handle(self, req: C.StartRequest) -> None:
        """Run one request; a broken data link is reported on control, then ends the session.

        The report ("data_in closed: ..." / "data_out closed: ...") lets the
        orchestrator tell a stage that died from its neighbours that merely
        lost it.
        """
        try:
            self._handle(req)
        except _LinkLost as lost:
            try:
                self.ctl.send(C.RequestError(req.request_id, str(lost)))
            except (CmlpError, OrchestratorGone):
                pass
            raise lost.exc from None

    def _handle(self, req: C.StartRequest) -> None:
        trace.event(self.ev["start_request"])
        rid, m = req.request_id, req.num_micro_batches
        self.current, self.aborted = rid, None
        idx = self.w.idx
        if req.seq_len > self.activation.max_seq_len:
            reason = f"seq_len {req.seq_len} exceeds max_seq_len {self.activation.max_seq_len}"
            log.warning("stage %d: request %d rejected: %s", idx, rid, reason)
            self._drain_inputs(m)
            self._fail_request(rid, reason)
            return
        begin = getattr(self.w.executor, "begin_request", None)
        if begin is not None:
            begin(rid, req.seq_len, m)
        compute_ns = 0
        error: Optional[str] = None
        done = 0
        confirmed = False
        upstream_err = False
        limits = self._input_limits(req.seq_len)
        for mb in range(m):
            tensors, status = self._read_group(limits)
            if status == "ERR":
                upstream_err = True
                error = str(StageFailed(UNKNOWN_STAGE, "upstream stage reported error"))
                break
            if status is None:
                break
            if status == "LIMIT":
                error = str(self.limit_error)
                done = mb + 1
                break
            trace.event(self.ev["input"])
            t0 = time.perf_counter_ns()
            try:
                outputs = self.w.executor.forward(rid, mb, tensors)
            except StageError as exc:
                error = f"stage error: {exc}"
                done = mb + 1
                break
            compute_ns += time.perf_counter_ns() - t0
            trace.event(self.ev["forward_done"])
            if mb == m - 1:
                # Confirm before the last output leaves.  The last stage's RequestDone is
                # then already buffered when the logits reach the orchestrator (one wake-up
                # less per request, ~100 us on a VM), and every stage goes to sleep right
                # after its data send, so the kernel may run the woken neighbour on the same
                # core.  A failed send after this still ends the session and is reported
                # on this channel.
                self.ctl.send(C.RequestDone(rid, compute_ns // 1000))
                confirmed = True
            self._send_output(outputs)
            trace.event(self.ev["output_sent"])
            for t in outputs:
                t.wipe_metadata()
            done = mb + 1
            if self.aborted is not None or self.shutdown:
                break
        if self.shutdown:
            return  # no Done/Error/ERR, as the reference
        if error is None and self.aborted is not None:
            error = f"aborted: {self.aborted}"
            if done < m:
                self._drain_inputs(m - done)
        elif error is not None and not upstream_err and done < m:
            self._drain_inputs(m - done)
        self.current = None
        if error is not None:
            self._fail_request(rid, error)
        elif not confirmed:
            self.ctl.send(C.RequestDone(rid, compute_ns // 1000))

    def _fail_request(self, rid: int, error: str) -> None:
        try:
            self.data_out.send(ERR)
        except CmlpError as exc:
            log.warning("stage %d: could not send ERR downstream: %s", self.w.idx, exc)
        log.warning("stage %d: request %d failed: %s", self.w.idx, rid, error)
        self.ctl.send(C.RequestError(rid, error))
        self.current = None
