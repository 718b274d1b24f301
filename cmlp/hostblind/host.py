"""``cmlp serve``: the host side of host-blind mode (untrusted; it sees ciphertext only).

The host keeps the lifecycle: it connects the control channels, sends Init
and EstablishDataChannels, runs the relays (the inter-stage links and the
feedback link when the manifest routes them through the host), checks health
and, when the pipeline breaks, starts a new session with the persistent
stages.  It accepts client TCP connections and forwards each one, byte for
byte, to stage 0's client endpoint; the SecureChannel inside runs between the
client and stage 0.  It learns sizes, frame counts and timings, never content.

Before forwarding, the host writes an 8-byte status preamble to the client
(``CMLPHB`` 0x01 status): 0 connected to stage 0, 1 busy (queue full),
2 pipeline unavailable.  It is unauthenticated, like anything the host says:
the host can always refuse service, and that is all the preamble can express.
Up to ``concurrency`` clients are forwarded at once (stage 0 batches them,
docs/batching.md); up to ``queue_size`` wait, the rest get
"busy" at once.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import threading
import time
from typing import List, Optional

from cmlp import _netio
from cmlp.errors import CmlpError, ManifestError, ProtocolError, StageFailed, Timeout
from cmlp.manifest import Manifest
from cmlp.pipeline import control as C
from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
from cmlp.pipeline.relay import RelayLink
from cmlp.transport import sockets
from cmlp.transport.sockets import Endpoint, VsockAddr
from cmlp.transport.wire import HEADER_SIZE

log = logging.getLogger(__name__)

PREAMBLE_MAGIC = b"CMLPHB\x01"
PREAMBLE_SIZE = len(PREAMBLE_MAGIC) + 1
STATUS_OK, STATUS_BUSY, STATUS_UNAVAILABLE = 0, 1, 2
_LEN = struct.Struct(">I")


def preamble(status: int) -> bytes:
    return PREAMBLE_MAGIC + bytes([status])


class HostLifecycle(Orchestrator):
    """The orchestrator's control side without its data channels (host-blind manifests)."""

    def __init__(self, manifest: Manifest, config: OrchestratorConfig):
        if not manifest.host_blind:
            raise ProtocolError("the manifest has no host_blind section (no client endpoint)")
        config.validate()
        self.manifest = manifest
        self.config = config
        self.state = "created"
        self.tainted = False
        self.links = []
        self.relays: List[RelayLink] = []
        self.data_in = self.data_out = None
        n = manifest.num_stages
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
            if manifest.feedback_relayed():
                self.relays.append(
                    RelayLink(
                        n - 1,
                        self._relay_listen_addr(n - 1),
                        manifest.stages[0].endpoint.data_in.endpoint,
                        config.retry,
                        config.relay_capture_prefix,
                    )
                )
        except BaseException:
            self.close()
            raise

    def establish_data_channels(self) -> None:
        if self.state != "initialized":
            raise ProtocolError("establish_data_channels() requires Initialized state")
        cfg = self.config
        n = self.manifest.num_stages
        for link in self.links:
            link.send(C.EstablishDataChannels(n > 1, n > 1))
        try:
            for relay in self.relays:
                relay.start(cfg.data_setup_timeout)
            for relay in self.relays:
                relay.wait_ready(cfg.data_setup_timeout)
            for link in self.links:
                try:
                    msg = link.recv(cfg.data_setup_timeout)
                except Timeout:
                    raise StageFailed(
                        link.index, f"no DataChannelsReady within {cfg.data_setup_timeout} s"
                    ) from None
                if not isinstance(msg, C.DataChannelsReady) or msg.stage_idx != link.index:
                    raise StageFailed(link.index, f"expected DataChannelsReady, got {C.describe(msg)}")
        except BaseException:
            for relay in self.relays:
                relay.close()
            raise
        self.state = "ready"

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        for link in self.links:
            link.channel.close()
        self.state = "closed" if self.state != "created" else self.state


def _bind(endpoint: Endpoint):
    if isinstance(endpoint, VsockAddr):
        endpoint = VsockAddr(sockets.VSOCK_CID_ANY, endpoint.port)
    return sockets.listen(endpoint)


class HostBlindServer:
    """Accepts clients on ``listen`` and forwards them, one at a time, to stage 0."""

    def __init__(
        self,
        manifest: Manifest,
        config: OrchestratorConfig,
        listen: Endpoint,
        *,
        queue_size: int = 8,
        metrics=None,
        health_interval: float = 2.0,
        capture_prefix: Optional[str] = None,
        connect_timeout: float = 5.0,
        concurrency: int = 1,
    ):
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.active = 0  # clients being forwarded (metrics)
        self.active_lock = threading.Lock()
        self.manifest = manifest
        self.config = config
        self.listen_at = listen
        self.metrics = metrics
        self.health_interval = health_interval
        self.capture_prefix = capture_prefix
        self.connect_timeout = connect_timeout
        if manifest.client_endpoint is None:
            raise ManifestError("the manifest has no host_blind section (stage 0's client endpoint)")
        self.stage0 = manifest.client_endpoint.endpoint
        self.pending: "queue.Queue" = queue.Queue()
        # clients in the system (served + waiting): at most queue_size + concurrency,
        # the rest are "busy"
        self.slots = threading.BoundedSemaphore(queue_size + concurrency)
        self.pipeline: Optional[HostLifecycle] = None
        self.up = threading.Event()
        self.stopping = threading.Event()
        self.busy = threading.Lock()  # held while a client is forwarded
        self.served = 0
        self.listener: Optional[socket.socket] = None
        self._threads: List[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------
    def _start_pipeline(self) -> None:
        pipeline = HostLifecycle(self.manifest, self.config)
        try:
            pipeline.init()
            pipeline.establish_data_channels()
            pipeline.health_check()
        except BaseException:
            pipeline.close()
            raise
        self.pipeline = pipeline
        self.up.set()
        self._stage_metrics(True)
        log.info("pipeline ready: %d stage(s), host-blind", self.manifest.num_stages)

    def _stage_metrics(self, up: bool) -> None:
        if self.metrics is not None:
            for i in range(self.manifest.num_stages):
                self.metrics.set_stage_up(i, up)

    def start(self) -> "HostBlindServer":
        self._start_pipeline()
        self.listener = sockets.listen(self.listen_at)
        loops = [(self._accept_loop, "hb-accept"), (self._supervise, "hb-health")]
        loops += [(self._serve_loop, f"hb-serve-{i}") for i in range(self.concurrency)]
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def address(self) -> Endpoint:
        assert self.listener is not None, "start() first"
        return sockets.local_endpoint(self.listener)

    def _supervise(self) -> None:
        """Health checks; a broken pipeline is torn down and started again."""
        while not self.stopping.wait(self.health_interval):
            pipeline = self.pipeline  # set whenever `up` is (this thread restarts it)
            if self.up.is_set() and pipeline is not None:
                try:
                    pipeline.health_check()
                    continue
                except (CmlpError, OSError) as exc:
                    log.warning("pipeline health check failed: %s; restarting", exc)
                    self.up.clear()
                    self._stage_metrics(False)
                    with self.busy:
                        pipeline.close()
            try:
                self._start_pipeline()
            except (CmlpError, OSError) as exc:
                log.warning("pipeline restart failed: %s", exc)

    def close(self) -> None:
        self.stopping.set()
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
        while True:
            try:
                sock, _ = self.pending.get_nowait()
            except queue.Empty:
                break
            _refuse(sock, STATUS_UNAVAILABLE)
        for _ in range(self.concurrency):
            self.pending.put((None, 0.0))
        if self.pipeline is not None:
            self.pipeline.close()

    def shutdown(self) -> None:
        """Stop the stages (Shutdown on every control channel), then close."""
        self.stopping.set()
        if self.pipeline is not None and self.up.is_set():
            try:
                self.pipeline.shutdown()
            except CmlpError as exc:
                log.warning("shutdown: %s", exc)
        self.close()

    # -- clients ------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self.listener
        assert listener is not None, "start() binds it before this thread runs"
        while not self.stopping.is_set():
            try:
                sock = sockets.accept(listener, timeout=0.5)
            except Timeout:
                continue
            except OSError:
                return
            if self.slots.acquire(blocking=False):
                self.pending.put((sock, time.monotonic()))
            else:
                log.info("client refused: the queue is full")
                _refuse(sock, STATUS_BUSY)
                if self.metrics is not None:
                    self.metrics.request_finished(None, error="busy")
            if self.metrics is not None:
                self.metrics.set_queue_depth(self.pending.qsize())

    def _serve_loop(self) -> None:
        while True:
            sock, arrived = self.pending.get()
            if sock is None:
                return
            if self.metrics is not None:
                self.metrics.set_queue_depth(self.pending.qsize())
            try:
                if self.concurrency == 1:
                    with self.busy:
                        self._serve_one(sock)
                else:  # many at once: a restart fails the ones in flight
                    self._serve_one(sock)
            finally:
                self.slots.release()

    def _serve_one(self, client: socket.socket) -> None:
        m = self.metrics
        if not self.up.is_set():
            _refuse(client, STATUS_UNAVAILABLE)
            if m is not None:
                m.request_finished(None, error="unavailable")
            return
        try:
            upstream = sockets.connect(self.stage0, timeout=self.connect_timeout)
        except OSError as exc:
            log.warning("cannot reach stage 0's client endpoint %s: %s", self.stage0, exc)
            _refuse(client, STATUS_UNAVAILABLE)
            if m is not None:
                m.request_finished(None, error="unavailable")
            return
        if m is not None:
            m.request_started()
        self._count_active(1)
        try:
            client.sendall(preamble(STATUS_OK))
        except OSError:
            upstream.close()
            client.close()
            self._count_active(-1)
            if m is not None:
                m.request_finished(None, error="client_gone")
            return
        self.served += 1
        error = None
        pump = threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True)
        pump.start()
        try:
            error = self._forward_down(upstream, client)
        finally:
            for s in (client, upstream):
                try:
                    _netio.shutdown_both(s.fileno())
                except (OSError, ValueError):
                    pass
            pump.join(5)
            client.close()
            upstream.close()
            self._count_active(-1)
            if m is not None:
                m.request_finished(None, error=error)

    def _count_active(self, delta: int) -> None:
        with self.active_lock:
            self.active += delta
            n = self.active
        if self.metrics is not None:
            self.metrics.set_active(n)

    def _capture(self, key: str) -> int:
        if not self.capture_prefix:
            return -1
        return os.open(
            f"{self.capture_prefix}client_{key}.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        """client -> stage 0, in C with the GIL released."""
        fd = self._capture("up")
        try:
            _netio.pump(client.fileno(), upstream.fileno(), fd)
        finally:
            if fd >= 0:
                os.close(fd)
            # the client is gone: end the forwarding even if stage 0 never answered
            # (a connection still in its listener's backlog between sessions)
            try:
                _netio.shutdown_both(upstream.fileno())
            except (OSError, ValueError):
                pass

    def _forward_down(self, upstream: socket.socket, client: socket.socket) -> Optional[str]:
        """stage 0 -> client, counting frames (13-byte headers) for timing metrics only.

        Frame 1 is stage 0's handshake hello, frame 2 the Started message,
        frames 3.. the tokens and the final message; the host cannot tell
        which is which beyond that, and does not try.
        """
        m = self.metrics  # errors are reported as short kinds, never as text
        fd = self._capture("down")
        buf = bytearray(65536)
        view = memoryview(buf)
        header = bytearray()
        skip = 0  # payload bytes of the current frame still to pass
        frames = 0
        t_start = time.monotonic()
        t_last = None
        try:
            while True:
                try:
                    n = upstream.recv_into(buf)
                except OSError:
                    return "stage0_link"
                if n == 0:
                    return None
                if fd >= 0:
                    os.write(fd, view[:n])
                try:
                    client.sendall(view[:n])
                except OSError:
                    return "client_link"
                pos = 0
                while pos < n:  # walk the frame boundaries in this chunk
                    if skip:
                        take = min(skip, n - pos)
                        skip -= take
                        pos += take
                        continue
                    need = HEADER_SIZE - len(header)
                    header += view[pos : pos + need]
                    pos += min(need, n - pos)
                    if len(header) == HEADER_SIZE:
                        skip = _LEN.unpack_from(header, 9)[0]
                        header.clear()
                        frames += 1
                        if m is not None and frames >= 3:
                            now = time.monotonic()
                            if frames == 3:
                                m.first_token(now - t_start)
                            m.token(None if t_last is None else now - t_last)
                            t_last = now
        finally:
            if fd >= 0:
                os.close(fd)


def _refuse(sock: socket.socket, status: int) -> None:
    try:
        sock.sendall(preamble(status))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
