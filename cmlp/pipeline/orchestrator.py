"""The orchestrator: connects the stages, runs requests, keeps the pipeline in sync.

Lifecycle (pipeline.md 2.5): ``Created -> Initialized -> Ready`` plus a sticky
*tainted* flag.  ``start()`` does everything up to Ready: bind the final
data_out listener and the relay listeners, connect every control channel,
Init all stages (weights load in parallel), EstablishDataChannels, the data
handshakes (through the host relays where the manifest asks for them),
DataChannelsReady, and one health check.

Every failure names the stage it comes from.  Compared with the reference,
the orchestrator never lets the channels drift out of step: outputs are read
while inputs are sent when several micro-batches could fill the buffers,
after an ERR every stage's confirmation is collected, after a timeout the
exact remainder of the request is drained (or the pipeline is tainted), and
frame writes are never cut in half (a send that times out part-way closes
its channel, which fails the pipeline loudly instead of desynchronising it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from cmlp import trace
from cmlp.attestation.factory import refuse_mock_in_production
from cmlp.attestation.role import Role
from cmlp.deadline import Deadline
from cmlp.errors import (
    UNKNOWN_STAGE,
    ChannelBroken,
    Closed,
    CmlpError,
    PipelineError,
    PipelineShutdown,
    PipelineTimeout,
    ProtocolError,
    RequestFailed,
    StageFailed,
    Tainted,
    Timeout,
)
from cmlp.manifest import Manifest, compact_json
from cmlp.pipeline import control as C
from cmlp.pipeline.ids import next_id
from cmlp.pipeline.relay import RelayLink
from cmlp.transport import (
    Data,
    ErrorMessage,
    SecureChannel,
    SessionConfig,
    ShutdownMessage,
    TensorMessage,
    sockets,
)
from cmlp.transport.config import RetryPolicy, SecurityProfile
from cmlp.transport.sockets import Endpoint, VsockAddr
from cmlp.transport.wire import Tensor

log = logging.getLogger(__name__)

END = C.END
ERR = C.ERR
U32_MAX = 0xFFFFFFFF


@dataclass
class OrchestratorConfig:
    provider: object
    verifier: object
    session: SessionConfig = field(default_factory=SessionConfig)
    health_check_timeout: float = 10.0
    infer_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stage_drain_timeout: float = 5.0
    data_drain_timeout: float = 2.0
    data_quiet_period: float = 0.2
    shutdown_timeout: float = 10.0
    require_measurements: bool = True
    max_control_message_bytes: int = C.DEFAULT_MAX_CONTROL_MESSAGE_BYTES
    init_timeout: float = 600.0  # waiting for Ready: weights load (cmlp addition)
    data_setup_timeout: float = 60.0  # data channels and DataChannelsReady (cmlp addition)
    relay_capture_prefix: Optional[str] = None
    bind_roles: bool = True  # attested pipeline roles (docs/attestation.md)

    @classmethod
    def development(cls, provider, verifier, **kw) -> "OrchestratorConfig":
        kw.setdefault("session", SessionConfig.development())
        kw.setdefault("require_measurements", False)
        return cls(provider=provider, verifier=verifier, **kw)

    def validate(self) -> None:
        refuse_mock_in_production(
            self.session.security_profile is SecurityProfile.PRODUCTION, self.provider, self.verifier
        )
        for name in (
            "stage_drain_timeout",
            "data_drain_timeout",
            "data_quiet_period",
            "infer_timeout",
            "health_check_timeout",
            "max_control_message_bytes",
        ):
            if not getattr(self, name) or getattr(self, name) <= 0:
                raise ProtocolError(f"{name} must be > 0")


@dataclass
class InferenceResult:
    request_id: int
    outputs: List[List[Tensor]]  # per micro-batch
    compute_us: List[Optional[int]]  # per stage, from RequestDone (None if not reported)


class _StageLink:
    """The orchestrator's control channel to one stage."""

    def __init__(self, index: int, channel: SecureChannel, limit: int):
        self.index = index
        self.channel = channel
        self.limit = limit

    def send(self, msg, timeout: Optional[float] = None) -> None:
        try:
            self.channel.send(msg.encode(), timeout=timeout)
        except Timeout:
            raise
        except CmlpError as exc:
            raise StageFailed(self.index, f"control channel: {exc}") from exc

    def recv(self, timeout: Optional[float] = None):
        try:
            msg = self.channel.recv(timeout)
        except Timeout:
            raise
        except CmlpError as exc:
            raise StageFailed(self.index, f"control channel: {exc}") from exc
        if isinstance(msg, Data):
            return C.decode_stage_msg(msg.payload, self.limit)
        if isinstance(msg, ShutdownMessage):
            raise PipelineShutdown()
        if isinstance(msg, ErrorMessage):  # the stage says why it cannot go on
            raise StageFailed(self.index, msg.text.removeprefix(f"stage {self.index}: "))
        raise ProtocolError(
            f"expected Data on control channel of stage {self.index}, got {type(msg).__name__}"
        )

    def recv_for(self, request_id: int, timeout: Optional[float]):
        """Tolerant reader (2.9): skip Pongs and confirmations of other requests."""
        while True:
            msg = self.recv(timeout)
            if isinstance(msg, C.Pong):
                continue
            if isinstance(msg, (C.RequestDone, C.RequestError)) and msg.request_id != request_id:
                log.debug("stage %d: skipping stale %s for %d", self.index, msg.TYPE, msg.request_id)
                continue
            return msg

    def probe(self) -> tuple:
        """Non-blocking look at the control channel after a failure.

        Returns ``("dead", reason)`` when the channel is closed, ``("explained",
        (side, text))`` when the stage said which of its data links broke and
        why (``side`` is "data_in" or "data_out"; a stage sends this just
        before it drops a broken session), or ``("alive", None)``.
        """
        explained = None
        while True:
            if self.channel.closed:
                return ("explained", explained) if explained else ("dead", "control channel closed")
            if not self.channel.pending():
                return ("explained", explained) if explained else ("alive", None)
            try:
                msg = self.recv(timeout=0.05)
            except Timeout:
                return ("alive", None)
            except StageFailed as exc:
                return ("explained", explained) if explained else ("dead", exc.reason)
            if isinstance(msg, C.RequestError):
                for side in ("data_in", "data_out"):
                    if msg.error.startswith(f"{side} closed"):
                        explained = (side, msg.error[len(side) + len(" closed: ") :])


class Orchestrator:
    def __init__(
        self, manifest: Manifest, config: OrchestratorConfig, data_out_listen: Optional[Endpoint] = None
    ):
        config.validate()
        self.manifest = manifest
        self.config = config
        self.state = "created"
        self.tainted = False
        self.links: List[_StageLink] = []
        self.relays: List[RelayLink] = []
        self.data_in: Optional[SecureChannel] = None
        self.data_out: Optional[SecureChannel] = None
        last = manifest.stages[-1].endpoint.data_out.endpoint
        if data_out_listen is None:
            data_out_listen = last
        if isinstance(data_out_listen, VsockAddr):  # the host binds any CID
            data_out_listen = VsockAddr(sockets.VSOCK_CID_ANY, data_out_listen.port)
        self.data_out_listen = data_out_listen
        self._listener = sockets.listen(data_out_listen)
        try:
            for i in manifest.relayed_links():
                self.relays.append(
                    RelayLink(
                        i,
                        self._relay_listen_addr(i),
                        manifest.stages[i + 1].endpoint.data_in.endpoint,
                        config.retry,
                        config.relay_capture_prefix,
                    )
                )
        except BaseException:
            self.close()
            raise

    def _relay_listen_addr(self, i: int) -> Endpoint:
        ep = self.manifest.stages[i].endpoint.data_out.endpoint
        return VsockAddr(sockets.VSOCK_CID_ANY, ep.port) if isinstance(ep, VsockAddr) else ep

    # -- configuration per peer ----------------------------------------------
    def _config_for(self, stage: int) -> SessionConfig:
        pins = self.manifest.stages[stage].measurements()
        config = self.config.session.with_measurements(pins) if pins else self.config.session
        if self.config.bind_roles:
            digest = self.manifest.pipeline_digest()
            config = config.replace(own_role=Role.orchestrator(digest), peer_role=Role(stage, digest))
        return config

    # -- start-up -------------------------------------------------------------
    def start(self) -> "Orchestrator":
        """Init, data channels and one health check: Created -> Ready."""
        try:
            self.init()
            self.establish_data_channels()
            self.health_check()
        except KeyboardInterrupt:
            self.abandon()
            raise
        except BaseException:
            self.close()
            raise
        return self

    def init(self) -> None:
        if self.state != "created":
            raise ProtocolError("init() must be called exactly once, in Created state")
        self.links = []
        cfg = self.config
        # every control channel at once: start-up does not pay N handshakes in a row, and
        # if one stage fails every other stage still learns it, through its closed channel
        results: List[Union[_StageLink, StageFailed, None]] = [None] * self.manifest.num_stages

        def connect(spec):
            ep = spec.endpoint.control.endpoint
            try:
                sock = sockets.connect_retry(ep, cfg.retry)
                channel = SecureChannel.connect(
                    sock, cfg.provider, cfg.verifier, self._config_for(spec.stage_idx)
                )
                results[spec.stage_idx] = _StageLink(spec.stage_idx, channel, cfg.max_control_message_bytes)
            except (CmlpError, OSError) as exc:
                failure = StageFailed(spec.stage_idx, f"control connect to {ep}: {exc}")
                failure.__cause__ = exc
                results[spec.stage_idx] = failure

        threads = [
            threading.Thread(target=connect, args=(spec,), daemon=True) for spec in self.manifest.stages
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.links = [r for r in results if isinstance(r, _StageLink)]
        failed = [r for r in results if not isinstance(r, _StageLink)]
        if failed:
            raise failed[0] if failed[0] is not None else StageFailed(UNKNOWN_STAGE, "control connect failed")
        activation = compact_json(self.manifest.activation_spec.to_json())
        for link, spec in zip(self.links, self.manifest.stages, strict=True):
            link.send(C.Init(compact_json(spec.to_json()), activation, self.manifest.num_stages))
        for link in self.links:  # weights load on every stage at once
            try:
                msg = link.recv(cfg.init_timeout)
            except Timeout:
                raise PipelineTimeout(
                    f"stage {link.index} did not report Ready within {cfg.init_timeout} s"
                ) from None
            if not isinstance(msg, C.Ready):
                raise StageFailed(link.index, f"expected Ready, got {C.describe(msg)}")
            if msg.stage_idx != link.index:
                raise StageFailed(
                    link.index, f"stage {link.index} reported Ready with wrong stage_idx {msg.stage_idx}"
                )
        if not any(s.expected_measurements for s in self.manifest.stages):
            if cfg.require_measurements:
                raise ProtocolError("require_measurements is set but no stage has expected_measurements")
            log.info("no stage pins expected_measurements: stage identities are not verified")
        self.state = "initialized"

    def establish_data_channels(self) -> None:
        if self.state != "initialized":
            raise ProtocolError("establish_data_channels() requires Initialized state")
        cfg = self.config
        n = self.manifest.num_stages
        for link in self.links:
            link.send(C.EstablishDataChannels(link.index > 0, link.index < n - 1))
        for relay in self.relays:
            relay.start(cfg.data_setup_timeout)
        accepted: Dict[str, Any] = {}

        def accept_last():
            try:
                accepted["sock"] = sockets.accept(self._listener, cfg.data_setup_timeout)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                accepted["error"] = exc

        t = threading.Thread(target=accept_last, daemon=True)
        t.start()
        try:
            first = self.manifest.stages[0].endpoint.data_in.endpoint
            try:
                sock = sockets.connect_retry(first, cfg.retry)
                self.data_in = SecureChannel.connect(sock, cfg.provider, cfg.verifier, self._config_for(0))
            except (CmlpError, OSError) as exc:
                raise StageFailed(0, f"data_in connect to {first}: {exc}") from exc
            t.join(cfg.data_setup_timeout + 1)
            if "sock" not in accepted:
                err = accepted.get("error", "no connection")
                raise StageFailed(
                    n - 1, f"data_out: the last stage did not connect to {self.data_out_listen}: {err}"
                )
            try:
                self.data_out = SecureChannel.accept(
                    accepted["sock"], cfg.provider, cfg.verifier, self._config_for(n - 1)
                )
            except CmlpError as exc:
                raise StageFailed(n - 1, f"data_out handshake: {exc}") from exc
            for relay in self.relays:
                relay.wait_ready(cfg.data_setup_timeout)
            for link in self.links:
                msg = link.recv(cfg.data_setup_timeout)
                if not isinstance(msg, C.DataChannelsReady):
                    raise StageFailed(link.index, f"expected DataChannelsReady, got {C.describe(msg)}")
                if msg.stage_idx != link.index:
                    raise StageFailed(link.index, f"DataChannelsReady with wrong stage_idx {msg.stage_idx}")
        except BaseException:
            for relay in self.relays:
                relay.close()
            raise
        self.state = "ready"

    # -- requests -------------------------------------------------------------
    def _check_ready(self, what: str) -> None:
        if self.state != "ready":
            raise ProtocolError(f"{what}() requires Ready state (state is {self.state})")
        if self.tainted:
            raise Tainted()

    def infer(self, inputs: List[List[Tensor]], seq_len: int) -> InferenceResult:
        """Run one request of ``len(inputs)`` micro-batches through every stage."""
        self._check_ready("infer")
        rid = next_id()
        m = len(inputs)
        if m > U32_MAX:
            raise ProtocolError("too many micro-batches")
        if m == 0:
            return InferenceResult(rid, [], [])
        max_seq = self.manifest.activation_spec.max_seq_len
        if seq_len > max_seq:
            raise ProtocolError(f"seq_len {seq_len} exceeds manifest max_seq_len {max_seq}")
        req = _Request(self, rid, m, Deadline(self.config.infer_timeout))
        try:
            return req.run(inputs, seq_len)
        except Timeout:
            req.recover_after_timeout()
            raise PipelineTimeout("inference timed out") from None
        except (Closed, ChannelBroken) as exc:
            raise self._diagnose(exc) from exc

    def _diagnose(self, cause: BaseException, grace: float = 1.0) -> PipelineError:
        """Name the stage (or the link) behind a broken data channel.

        When one stage dies its neighbours fail too, and whichever closure
        reaches us first proves nothing.  So for a moment (at most ``grace``
        seconds) we collect each stage's state: dead without explanation,
        alive, or dropped with "my data_in/data_out broke because ..." (which
        points at the upstream or downstream neighbour).  The root cause is the
        lowest dead stage that a neighbour points at, else the lowest dead stage
        that explained nothing; a neighbour that is still alive means the link
        between them failed (tampering, or the relay), and the error says so.
        """
        n = len(self.links)
        state: Dict[int, Tuple[str, Any]] = {}
        start = time.monotonic()
        while True:
            for link in self.links:
                if state.get(link.index, ("alive",))[0] == "alive":
                    state[link.index] = link.probe()
            waited = time.monotonic() - start
            kinds = [st[0] for st in state.values()]
            if "alive" not in kinds or waited > grace:
                break
            if ("explained" in kinds and waited > 0.2) or ("dead" in kinds and waited > grace / 2):
                break
            time.sleep(0.02)
        blamed: Dict[int, Tuple[int, str, str]] = {}
        for i, (kind, what) in state.items():
            if kind == "explained":
                side, text = what
                j = i - 1 if side == "data_in" else i + 1
                if 0 <= j < n:
                    blamed.setdefault(j, (i, side, text))
        dead = sorted(i for i, st in state.items() if st[0] == "dead")
        for j in sorted(blamed):
            i, side, text = blamed[j]
            a, b = (j, i) if side == "data_in" else (i, j)
            if j in dead:
                return StageFailed(j, f"{state[j][1]} (stage {i} lost its {side} to it: {text})")
            if state[j][0] == "alive":
                return StageFailed(
                    j,
                    f"the data link stage {a} -> stage {b} failed: "
                    f"stage {i} reported '{text}' and stage {j} is still up "
                    "(a tampered or broken link, or the relay)",
                )
            return StageFailed(j, f"stage {i} lost its {side} to it: {text}")
        if dead:
            return StageFailed(dead[0], state[dead[0]][1])
        for relay in self.relays:
            if not relay.alive:
                return StageFailed(relay.index, f"relay {relay.index} to stage {relay.index + 1} stopped")
        return StageFailed(UNKNOWN_STAGE, f"data channel failed: {cause}")

    def health_check(self) -> None:
        self._check_ready("health_check")
        seq = next_id()
        deadline = Deadline(self.config.health_check_timeout)
        try:
            for link in self.links:
                link.send(C.Ping(seq), timeout=deadline.left())
            for link in self.links:
                while True:
                    msg = link.recv(deadline.left())
                    if isinstance(msg, C.Pong) and msg.seq == seq:
                        break
                    if isinstance(msg, (C.Pong, C.RequestDone, C.RequestError)):
                        continue
                    raise StageFailed(link.index, f"expected Pong, got {C.describe(msg)}")
        except Timeout:
            self.tainted = True
            raise PipelineTimeout("health check timed out") from None
        for relay in self.relays:
            if not relay.alive:
                log.warning("relay %d has stopped", relay.index)

    def shutdown(self) -> None:
        """Ask every stage to stop; wait for each acknowledgement."""
        errors = []
        for link in self.links:
            try:
                link.send(C.Shutdown(), timeout=self.config.shutdown_timeout)
            except CmlpError as exc:
                errors.append(exc)
        for link in self.links:
            deadline = Deadline(self.config.shutdown_timeout)
            try:
                while True:
                    msg = link.recv(deadline.left())
                    if isinstance(msg, C.ShuttingDown):
                        if msg.stage_idx != link.index:
                            log.warning(
                                "stage %d acknowledged shutdown as stage %d", link.index, msg.stage_idx
                            )
                        break
                    if isinstance(msg, (C.Pong, C.RequestDone, C.RequestError)):
                        continue  # leftovers of earlier failures (ambiguity 7)
                    raise ProtocolError(
                        f"expected ShuttingDown from stage {link.index}, got {C.describe(msg)}"
                    )
            except Timeout:
                errors.append(
                    PipelineTimeout(
                        f"stage {link.index} did not acknowledge "
                        f"shutdown within {self.config.shutdown_timeout} s"
                    )
                )
            except CmlpError as exc:
                errors.append(exc)
        self.close()
        if errors:
            raise errors[0]

    def abandon(self, timeout: float = 0.5) -> None:
        """Leave at once (Ctrl-C): a transport Shutdown on every control channel, then close.

        The stages tell this goodbye from a fault and end the session cleanly
        (exit 0, or wait for the next session when persistent).  Best effort:
        nothing is waited for beyond ``timeout`` per send.
        """
        for link in self.links:
            try:
                link.channel.shutdown(timeout=timeout)
            except (CmlpError, OSError):
                pass
        self.close()

    def close(self) -> None:
        """Drop every channel, relay and listener (idempotent)."""
        for relay in self.relays:
            relay.close()
        for ch in [link.channel for link in self.links] + [self.data_in, self.data_out]:
            if ch is not None:
                ch.close()
        try:
            self._listener.close()
        except OSError:
            pass
        self.state = "closed" if self.state != "created" else self.state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Request:
    """One in-flight request: its sends, its outputs and its confirmations."""

    def __init__(self, orch: Orchestrator, rid: int, m: int, deadline: Deadline):
        self.o = orch
        self.rid = rid
        self.m = m
        self.deadline = deadline
        self.groups_read = 0  # output micro-batches fully read
        self.got_err = False
        self.sends_done = False
        self.confirmed: Set[int] = set()
        self.outputs: List[List[Tensor]] = []
        self.reader_error: Optional[BaseException] = None

    # -- the normal path --------------------------------------------------------
    def run(self, inputs: List[List[Tensor]], seq_len: int) -> InferenceResult:
        trace.event("orch.infer")
        o = self.o
        for link in o.links:
            link.send(C.StartRequest(self.rid, self.m, seq_len), timeout=self.deadline.left())
        if self.m == 1:
            # stage 0 reads a whole micro-batch before doing anything else, so one
            # micro-batch of input can never deadlock against unread output
            self._send_inputs(inputs)
            self._read_outputs()
        else:
            reader = threading.Thread(target=self._reader, daemon=True)
            reader.start()
            try:
                self._send_inputs(inputs)
            finally:
                reader.join(self.deadline.remaining() + 1)
            if self.reader_error is not None:
                raise self.reader_error
        trace.event("orch.outputs")
        if self.got_err:
            raise self._collect_error()
        compute: List[Optional[int]] = [None] * len(o.links)
        for link in o.links:
            msg = link.recv_for(self.rid, self.deadline.left())
            if isinstance(msg, C.RequestDone):
                compute[link.index] = msg.compute_us
                self.confirmed.add(link.index)
            elif isinstance(msg, C.RequestError):
                self.confirmed.add(link.index)
                raise RequestFailed(self.rid, f"stage {link.index} error: {msg.error}")
            else:
                raise ProtocolError(f"expected RequestDone from stage {link.index}, got {C.describe(msg)}")
        trace.event("orch.done")
        return InferenceResult(self.rid, self.outputs, compute)

    def _send_inputs(self, inputs) -> None:
        data_in = self.o.data_in
        assert data_in is not None, "Orchestrator.start() opens the data channels first"
        try:
            for group in inputs:
                for t in group:
                    data_in.send_tensor(t, timeout=self.deadline.left(), more=True)
                data_in.send(END, timeout=self.deadline.left())
            trace.event("orch.inputs_sent")
        except (Closed, ChannelBroken) as exc:
            raise self.o._diagnose(exc) from exc
        finally:
            for group in inputs:  # best-effort zeroization of metadata (2.13)
                for t in group:
                    t.wipe_metadata()
        self.sends_done = True

    def _reader(self) -> None:
        try:
            self._read_outputs()
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self.reader_error = exc

    def _read_outputs(self) -> None:
        data_out = self.o.data_out
        assert data_out is not None, "Orchestrator.start() opens the data channels first"
        current: List[Tensor] = []
        while self.groups_read < self.m:
            msg = data_out.recv(self.deadline.left())
            if isinstance(msg, TensorMessage):
                current.append(msg.tensor)
            elif isinstance(msg, Data) and msg.payload == END:
                self.outputs.append(current)
                current = []
                self.groups_read += 1
            elif isinstance(msg, Data) and msg.payload == ERR:
                self.got_err = True
                return
            elif isinstance(msg, ShutdownMessage):
                raise PipelineShutdown()
            else:
                raise ProtocolError("unexpected message on data_out")

    # -- failure paths ------------------------------------------------------------
    def _collect_error(self) -> PipelineError:
        """After ERR: read every stage's confirmation (each bounded), report the first error."""
        o = self.o
        errors, dead = [], []
        for link in o.links:
            try:
                msg = link.recv_for(self.rid, o.config.stage_drain_timeout)
            except Timeout:
                continue
            except StageFailed as exc:
                dead.append((link.index, f"stage {link.index}: {exc.reason}"))
                continue
            self.confirmed.add(link.index)
            if isinstance(msg, C.RequestError):
                errors.append(f"stage {link.index} error: {msg.error}")
        if dead:  # a stage that went away is the root cause: name it
            return StageFailed(dead[0][0], "; ".join([d for _, d in dead] + errors))
        if errors:
            return RequestFailed(self.rid, errors[0])
        return RequestFailed(self.rid, "stage failed (no error details on control channel)")

    def recover_after_timeout(self) -> None:
        """Drain exactly what is left of this request, or taint the pipeline (2.11)."""
        o = self.o
        if not self.sends_done:
            o.tainted = True  # stage 0 holds part of a request: cannot resync
            return
        for link in o.links:
            if link.index in self.confirmed:
                continue
            try:
                msg = link.recv_for(self.rid, o.config.stage_drain_timeout)
            except (Timeout, CmlpError):
                o.tainted = True
                return
            if not isinstance(msg, (C.RequestDone, C.RequestError)):
                o.tainted = True
                return
        # every stage has finished: the rest of the output is already on the wire
        try:
            self.deadline = Deadline(o.config.data_drain_timeout)
            if not self.got_err:
                self._read_outputs()
            quiet = min(o.config.data_quiet_period, self.deadline.remaining())
            assert o.data_out is not None, "Orchestrator.start() opens the data channels first"
            try:
                o.data_out.recv(timeout=quiet)
                o.tainted = True  # more data than the request could produce
            except Timeout:
                pass
        except (Timeout, CmlpError):
            o.tainted = True
