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
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, List, Optional, Tuple

from cmlp.deadline import Deadline
from cmlp.errors import (UNKNOWN_STAGE, CmlpError, CryptoError, FrameError, InitFailed,
                         PipelineError, ProtocolError, SessionError, StageError, StageFailed,
                         Timeout)
from cmlp import trace
from cmlp.manifest import ActivationSpec, Manifest, StageSpec
from cmlp.pipeline import control as C
from cmlp.transport import (Data, SecureChannel, SessionConfig, ShutdownMessage, TensorMessage,
                            sockets)
from cmlp.transport.config import RetryPolicy
from cmlp.transport.sockets import Endpoint, VsockAddr
from cmlp.transport.wire import Tensor

log = logging.getLogger(__name__)

END = C.END
ERR = C.ERR
WATCH_SLICE = 0.05          # seconds between control checks while waiting for input


@dataclass
class StageConfig:
    provider: object
    verifier: object
    session: SessionConfig = field(default_factory=SessionConfig.development)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_control_message_bytes: int = C.DEFAULT_MAX_CONTROL_MESSAGE_BYTES
    data_setup_timeout: float = 60.0      # accepting data_in / reaching data_out
    input_timeout: float = 300.0          # a request waiting for its input (cmlp addition)
    persistent: bool = False              # serve one orchestrator session after another
    host_unattested: bool = False         # the orchestrator presents no attestation


class SessionEnded(Exception):
    """The orchestrator said Shutdown: end this session cleanly."""


class _Control:
    """Typed control messages over a SecureChannel (stage side)."""

    def __init__(self, channel: SecureChannel, limit: int):
        self.channel = channel
        self.limit = limit

    def send(self, msg) -> None:
        self.channel.send(msg.encode())

    def recv(self, timeout: Optional[float] = None):
        msg = self.channel.recv(timeout)
        if isinstance(msg, Data):
            return C.decode_orchestrator_msg(msg.payload, self.limit)
        if isinstance(msg, ShutdownMessage):
            raise SessionEnded()
        raise ProtocolError(f"expected Data on control channel, got {type(msg).__name__}")


class StageWorker:
    """Serves one stage of a manifest: ``bind()`` then ``serve()``."""

    def __init__(self, manifest: Manifest, stage_idx: int, executor, config: StageConfig,
                 data_out_target: Optional[Endpoint] = None):
        self.manifest = manifest
        self.spec = manifest.stage(stage_idx)
        self.idx = stage_idx
        self.executor = executor
        self.config = config
        self.data_out_target = data_out_target or self.spec.endpoint.data_out.endpoint
        if data_out_target is not None and data_out_target != self.spec.endpoint.data_out.endpoint:
            log.warning("stage %d: --data-out-target %s differs from the manifest's data_out %s",
                        stage_idx, data_out_target, self.spec.endpoint.data_out.endpoint)
        self.control_listener: Optional[socket.socket] = None
        self.data_listener: Optional[socket.socket] = None
        self.sessions = 0
        self.last_error: Optional[BaseException] = None   # of the last failed session
        self._initialized_spec: Optional[Tuple[Tuple[Any, ...], ActivationSpec]] = None
        self._stop = threading.Event()

    # -- listening -----------------------------------------------------------
    @staticmethod
    def _bind_endpoint(endpoint: Endpoint):
        if isinstance(endpoint, VsockAddr):       # enclaves listen on any CID
            endpoint = VsockAddr(sockets.VSOCK_CID_ANY, endpoint.port)
        return sockets.listen(endpoint)

    def bind(self) -> None:
        self.control_listener = self._bind_endpoint(self.spec.endpoint.control.endpoint)
        self.data_listener = self._bind_endpoint(self.spec.endpoint.data_in.endpoint)

    def close(self) -> None:
        self._stop.set()
        for lst in (self.control_listener, self.data_listener):
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
        while not self._stop.is_set():
            try:
                self.run_session()
            except (CmlpError, OSError) as exc:
                self.last_error = exc
                if not self.config.persistent:
                    raise
                log.warning("stage %d: session ended with an error: %s", self.idx, exc)
            if not self.config.persistent:
                return

    def _session_config(self, peer_stage: Optional[int]) -> SessionConfig:
        """Pins for a channel whose peer is ``peer_stage`` (None: the host orchestrator)."""
        base = self.config.session
        if peer_stage is None:
            return base.replace(expected_measurements=None,
                                allow_unattested_peer=self.config.host_unattested) \
                if self.config.host_unattested else base
        # A link between stages is always mutually attested: an empty document is refused
        # there even when the host may be unattested (or the base config allows it), since
        # the host relays that link and could otherwise stand in for the neighbour.
        return base.replace(expected_measurements=self.manifest.stages[peer_stage].measurements()
                            or base.expected_measurements, allow_unattested_peer=False)

    def _accept_control(self) -> SecureChannel:
        """The next control connection that completes the handshake.

        A connection that fails the handshake (a port probe, a peer with the
        wrong attestation) is logged and dropped; it cannot stop the stage.
        """
        listener = self.control_listener
        assert listener is not None, "StageWorker.bind() comes first"
        while True:
            sock = sockets.accept(listener)
            try:
                return SecureChannel.accept(sock, self.config.provider, self.config.verifier,
                                            self._session_config(None))
            except CmlpError as exc:
                self.last_error = exc
                log.warning("stage %d: control handshake failed: %s", self.idx, exc)

    def run_session(self) -> None:
        control = self._accept_control()
        cfg = self.config
        ctl = _Control(control, cfg.max_control_message_bytes)
        channels = [control]
        self.sessions += 1
        log.info("stage %d: control session %d (peer attestation: %s)", self.idx, self.sessions,
                 control.peer_attestation.platform)
        try:
            num_stages, activation = self._control_phase(ctl)
            data_in, data_out = self._data_phase(ctl, num_stages)
            channels += [data_in, data_out]
            ctl.send(C.DataChannelsReady(self.idx))
            _RequestLoop(self, ctl, data_in, data_out, activation).run()
        except SessionEnded:
            log.info("stage %d: session ended by the orchestrator", self.idx)
        finally:
            for ch in channels:
                ch.close()

    # -- control phase ---------------------------------------------------------
    def _control_phase(self, ctl: _Control):
        msg = ctl.recv()
        if not isinstance(msg, C.Init):
            raise ProtocolError(f"expected Init, got {C.describe(msg)}")
        try:
            spec = StageSpec.from_json(json.loads(msg.stage_spec_json))
        except (ValueError, RecursionError, CmlpError) as exc:
            raise ProtocolError(f"invalid stage_spec: {exc}") from None
        try:
            activation = ActivationSpec.from_json(json.loads(msg.activation_spec_json))
        except (ValueError, RecursionError, CmlpError) as exc:
            raise ProtocolError(f"invalid activation_spec: {exc}") from None
        if not self.spec.admits_init(spec):
            raise ProtocolError(
                f"Init for stage {spec.stage_idx} layers [{spec.layer_start}, {spec.layer_end}) "
                f"does not match this stage's manifest (stage {self.idx} layers "
                f"[{self.spec.layer_start}, {self.spec.layer_end}); the same hashes and at "
                "least its measurements are required)")
        if msg.num_stages != self.manifest.num_stages:
            raise ProtocolError(f"Init says {msg.num_stages} stages, the manifest has "
                                f"{self.manifest.num_stages}")
        key = (self.spec.security_fields(), activation)
        if self._initialized_spec != key:
            self.executor.init(self.spec, activation, msg.num_stages)
            self._initialized_spec = key
        self._check_weight_hashes()
        ctl.send(C.Ready(self.idx))
        while True:   # a loop, never recursion: any number of Pings is fine
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
            raise InitFailed(f"weight hash count mismatch: manifest declares {len(declared)} "
                             f"hashes, executor returned {len(actual)}")
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
        out_sock = self._connect_downstream(ctl, deadline)
        try:
            data_in = self._accept_upstream(ctl, deadline, self._session_config(up_peer))
        except BaseException:
            out_sock.close()
            raise
        try:
            data_out = SecureChannel.connect(out_sock, cfg.provider, cfg.verifier,
                                             self._session_config(down_peer))
        except BaseException:
            data_in.close()
            raise
        return data_in, data_out

    def _accept_upstream(self, ctl: _Control, deadline: Deadline, config: SessionConfig):
        """The first data_in connection that completes the handshake.

        A connection that fails it (left over from a dead session, or a host
        probing the port) is dropped and the next one is taken.
        """
        listener = self.data_listener
        assert listener is not None, "StageWorker.bind() comes first"
        while True:
            try:
                sock = sockets.accept(listener, timeout=0.2)
            except Timeout:
                self._check_control(ctl)
                if deadline.expired():
                    raise Timeout(f"no upstream connection on data_in within "
                                  f"{self.config.data_setup_timeout} s") from None
                continue
            try:
                return SecureChannel.accept(sock, self.config.provider, self.config.verifier,
                                            config)
            except CmlpError as exc:
                self.last_error = exc
                log.warning("stage %d: data_in handshake failed: %s", self.idx, exc)
                if deadline.expired():
                    raise

    def _connect_downstream(self, ctl: _Control, deadline: Deadline):
        """Connect data_out with the retry policy, checking control between attempts."""
        def pause(seconds: float) -> None:
            until = Deadline(seconds)
            while not until.expired():
                self._check_control(ctl)
                time.sleep(min(0.05, until.remaining()))

        return sockets.connect_retry(self.data_out_target, self.config.retry, timeout=2.0,
                                     sleep=pause, deadline=deadline)

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

    def __init__(self, worker: StageWorker, ctl: _Control, data_in: SecureChannel,
                 data_out: SecureChannel, activation: ActivationSpec):
        self.w = worker
        self.ctl = ctl
        self.data_in = data_in
        self.data_out = data_out
        self.activation = activation
        self.queued: Deque[C.StartRequest] = collections.deque()
        # trace event names built once, not per request
        self.ev = {k: f"stage{worker.idx}.{k}"
                   for k in ("start_request", "input", "forward_done", "output_sent")}
        self.current: Optional[int] = None
        self.aborted: Optional[str] = None
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
                log.warning("stage %d: AbortRequest %d with no request running", self.w.idx,
                            msg.request_id)
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
                return                 # a partial frame: keep it for later
            if isinstance(msg, C.Ping):
                self.ctl.send(C.Pong(msg.seq))
            elif isinstance(msg, C.AbortRequest):
                if msg.request_id == self.current:
                    self.aborted = msg.reason
                else:
                    log.warning("stage %d: AbortRequest for %d while running %s", self.w.idx,
                                msg.request_id, self.current)
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
                    raise Timeout(f"no input for request {self.current} within "
                                  f"{self.w.config.input_timeout} s") from None
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

    def _read_group(self):
        """Tensors until END: ``(tensors, "END")``, ``(None, "ERR")`` or ``(None, None)`` if cut."""
        tensors: List[Tensor] = []
        while True:
            msg = self._recv_input()
            if msg is None:
                return None, None
            if isinstance(msg, TensorMessage):
                tensors.append(msg.tensor)
            elif isinstance(msg, Data) and msg.payload == END:
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
            except CmlpError:
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
        compute_ns = 0
        error: Optional[str] = None
        done = 0
        confirmed = False
        upstream_err = False
        for mb in range(m):
            tensors, status = self._read_group()
            if status == "ERR":
                upstream_err = True
                error = str(StageFailed(UNKNOWN_STAGE, "upstream stage reported error"))
                break
            if status is None:
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
            return                                # no Done/Error/ERR, as the reference
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
