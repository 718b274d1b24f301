"""SecureChannel over TCP, socketpair and vsock, including a hostile network in between."""

import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.transport import (
    Data,
    ErrorMessage,
    Heartbeat,
    RetryPolicy,
    SecureChannel,
    SessionConfig,
    ShutdownMessage,
    TensorMessage,
    sockets,
)
from cmlp.transport.wire import DType, Tensor
from tests.helpers import mitm
from tests.helpers.common import cli_env


def dev(**kw):
    kw.setdefault("handshake_timeout", 5.0)
    return SessionConfig.development(**kw)


class TcpServer:
    """Accepts one SecureChannel on 127.0.0.1 in a thread."""

    def __init__(self, config=None, handler=None):
        self.listener = sockets.listen(sockets.parse_tcp_addr("127.0.0.1:0"))
        self.addr = self.listener.getsockname()
        self.channel = None
        self.error = None
        self.handler = handler
        self.done = threading.Event()
        self.config = config or dev()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            sock = sockets.accept(self.listener, timeout=10)
            self.channel = SecureChannel.accept(sock, MockProvider(), MockVerifier(), self.config)
            if self.handler:
                self.handler(self.channel)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout=10):
        assert self.done.wait(timeout), "server did not finish"
        return self.error


def echo(channel):
    while True:
        msg = channel.recv(timeout=10)
        if isinstance(msg, Data):
            channel.send(msg.payload)
        elif isinstance(msg, TensorMessage):
            channel.send_tensor(msg.tensor)
        elif isinstance(msg, ShutdownMessage):
            return


def client(addr, config=None):
    sock = sockets.connect(sockets.TcpAddr(*addr))
    return SecureChannel.connect(sock, MockProvider(), MockVerifier(), config or dev())


# ---------------------------------------------------------------------------
# normal operation
# ---------------------------------------------------------------------------
def test_tcp_echo_data_and_tensors_every_dtype():
    srv = TcpServer(handler=echo)
    ch = client(srv.addr)
    assert ch._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for i in range(100):
        ch.send(f"message {i}".encode())
        assert ch.recv(timeout=5).payload == f"message {i}".encode()
    for dtype in DType:
        raw = np.random.default_rng(int(dtype)).integers(0, 255, 6 * dtype.itemsize, np.uint8)
        t = Tensor(f"t{dtype.name}", dtype, (2, 3), raw.view(dtype.numpy).reshape(2, 3))
        ch.send_tensor(t)
        back = ch.recv(timeout=5).tensor
        assert (back.name, back.dtype, back.shape) == (t.name, dtype, (2, 3))
        assert back.data.tobytes() == t.data.tobytes()
    ch.shutdown()
    assert srv.wait() is None
    ch.close()


def test_large_messages_up_to_the_limit(channel_pair):
    init, resp = channel_pair
    big = np.random.default_rng(0).integers(0, 255, 33554432 - 16, np.uint8).tobytes()
    t = threading.Thread(target=init.send, args=(big,))
    t.start()
    got = resp.recv(timeout=30).payload
    t.join()
    assert got == big
    with pytest.raises(errors.PayloadTooLarge):
        init.send(big + b"x")  # rejected locally: the peer would refuse it
    init.send(b"still usable")
    assert resp.recv(timeout=5).payload == b"still usable"


def test_heartbeat_shutdown_error_frames(channel_pair):
    init, resp = channel_pair
    init.heartbeat()
    resp.heartbeat()
    init.send_error("stage exploded \u2620")
    init.shutdown()
    assert isinstance(resp.recv(timeout=5), Heartbeat)
    assert isinstance(init.recv(timeout=5), Heartbeat)
    msg = resp.recv(timeout=5)
    assert isinstance(msg, ErrorMessage) and msg.text == "stage exploded \u2620"
    assert isinstance(resp.recv(timeout=5), ShutdownMessage)
    init.send(b"shutdown does not close the transport")
    assert resp.recv(timeout=5).payload.startswith(b"shutdown")


def test_received_tensor_is_a_view_and_survives_later_receives(channel_pair):
    init, resp = channel_pair
    first = np.arange(1000, dtype=np.float32)
    init.send_tensor("a", first)
    a = resp.recv(timeout=5).tensor
    for i in range(20):
        init.send_tensor("b", np.full(5000, i, np.float32))
        assert resp.recv(timeout=5).tensor.data[0] == i
    np.testing.assert_array_equal(a.data, first)
    assert a.data.base is not None  # zero-copy view, not an owned copy


def test_recv_timeout_keeps_partial_frame():
    """A timeout in the middle of a frame must not cut it: the next recv completes it."""
    a, raw = sockets.socketpair()
    from cmlp import _frame, _record
    from cmlp.transport.handshake import InitiatorHandshake

    peer = {}

    def accept():
        peer["ch"] = SecureChannel.accept(a, MockProvider(), MockVerifier(), dev())

    t = threading.Thread(target=accept)
    t.start()
    hs = InitiatorHandshake(MockProvider(), MockVerifier(), dev())
    raw.sendall(hs.start())
    dec = _frame.FrameDecoder()
    while (f := dec.next_frame()) is None:
        dec.feed(raw.recv(4096))
    raw.sendall(hs.on_responder_hello(f))
    t.join(5)
    ch = peer["ch"]
    frame = _record.Sealer(hs.keys.send_key, hs.keys.session_id).seal_frame(2, 1, b"x" * 5000)
    raw.sendall(frame[:2500])
    with pytest.raises(errors.Timeout):
        ch.recv(timeout=0.2)
    assert not ch.closed
    raw.sendall(frame[2500:])
    assert ch.recv(timeout=5).payload == b"x" * 5000


def test_closed_peer_gives_closed(channel_pair):
    init, resp = channel_pair
    init.close()
    with pytest.raises(errors.Closed):
        resp.recv(timeout=5)
    with pytest.raises(errors.ChannelBroken):
        resp.send(b"after close")


def test_concurrent_send_and_recv_threads(channel_pair):
    init, resp = channel_pair
    n = 300

    def pump():
        for i in range(n):
            init.send(struct.pack("<I", i))

    threads = [threading.Thread(target=pump)]
    got = []

    def reader():
        for _ in range(n):
            got.append(struct.unpack("<I", resp.recv(timeout=10).payload)[0])

    def back_reader():
        for _ in range(n):
            init.recv(timeout=10)

    threads += [threading.Thread(target=reader), threading.Thread(target=back_reader)]
    for t in threads:
        t.start()
    for _ in range(n):
        resp.send(b"x")  # the other direction at the same time
    for t in threads:
        t.join(10)
    assert got == list(range(n))


# ---------------------------------------------------------------------------
# hostile network: a man in the middle on TCP
# ---------------------------------------------------------------------------
def through_proxy(upstream=mitm.passthrough, downstream=mitm.passthrough, config=None):
    srv = TcpServer(handler=echo, config=config)
    proxy = mitm.MitmProxy(srv.addr, upstream, downstream)
    return srv, proxy, client(proxy.addr, config)


@pytest.mark.parametrize(
    "offset, name", [(3, "type"), (4, "flags"), (8, "sequence"), (20, "ciphertext"), (-1, "tag")]
)
def test_bit_flip_in_each_header_field_and_body(offset, name):
    # up frames: 0 = msg1, 1 = msg3, 2 = first Data
    srv, proxy, ch = through_proxy(upstream=mitm.flip_bit(2, offset))
    ch.send(b"attack at dawn, " * 4)
    err = srv.wait()
    assert isinstance(
        err,
        (
            errors.OpenFailed,
            errors.SequenceError,
            errors.FrameError,
            errors.UnencryptedFrame,
            errors.UnexpectedMessage,
        ),
    ), (name, err)
    assert srv.channel.closed
    proxy.close()
    ch.close()


def test_replayed_frame_rejected():
    srv, proxy, ch = through_proxy(upstream=mitm.replay(2))
    ch.send(b"pay 100")
    err = srv.wait()
    assert isinstance(err, errors.SequenceReplay)
    proxy.close()


def test_swapped_frames_rejected():
    srv, proxy, ch = through_proxy(upstream=mitm.swap(2))
    ch.send(b"first")
    ch.send(b"second")
    err = srv.wait()
    assert isinstance(err, errors.SequenceGap)  # the second arrives first
    proxy.close()


def test_truncated_frame_then_close():
    srv, proxy, ch = through_proxy(upstream=mitm.truncate_and_close(2))
    ch.send(b"a" * 100)
    assert isinstance(srv.wait(), errors.Closed)
    proxy.close()


def test_oversized_length_injected():
    srv, proxy, ch = through_proxy(upstream=mitm.inject_before(2, mitm.oversized_header()))
    ch.send(b"x")
    err = srv.wait()
    assert isinstance(err, errors.PayloadTooLarge) and err.size == 32 * 1024 * 1024 + 1
    proxy.close()


def test_garbage_first_bytes():
    srv = TcpServer()
    proxy = mitm.MitmProxy(srv.addr, upstream=mitm.inject_before(0, b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(errors.CmlpError):
        client(proxy.addr)
    assert isinstance(srv.wait(), errors.InvalidMagic)
    proxy.close()


def test_wrong_protocol_version():
    srv = TcpServer()
    proxy = mitm.MitmProxy(srv.addr, upstream=mitm.set_version(0, 3))
    with pytest.raises(errors.CmlpError):
        client(proxy.addr)
    err = srv.wait()
    assert isinstance(err, errors.UnsupportedVersion) and err.version == 3
    proxy.close()


def test_handshake_stall_times_out_both_sides():
    cfg = dev(handshake_timeout=0.5)
    srv = TcpServer(config=cfg)
    proxy = mitm.MitmProxy(srv.addr, downstream=mitm.stall(0))
    t0 = time.monotonic()
    with pytest.raises(errors.Timeout):
        client(proxy.addr, cfg)
    assert isinstance(srv.wait(), (errors.Timeout, errors.Closed))
    assert time.monotonic() - t0 < 3
    proxy.close()


def test_no_plaintext_on_the_wire():
    srv = TcpServer(handler=echo)
    proxy = mitm.MitmProxy(srv.addr, record=True)
    ch = client(proxy.addr)
    secret = b"TOP-SECRET-PROMPT-The capital of France is"
    ch.send(secret)
    assert ch.recv(timeout=5).payload == secret
    arr = np.linspace(0, 1, 768, dtype=np.float32)
    ch.send_tensor("hidden_states", arr)
    ch.recv(timeout=5)
    ch.shutdown()
    srv.wait()
    wire = bytes(proxy.captured["up"]) + bytes(proxy.captured["down"])
    assert secret not in wire and b"hidden_states" not in wire
    raw = arr.tobytes()
    assert not any(raw[i : i + 16] in wire for i in range(0, len(raw) - 16, 4))
    proxy.close()


# ---------------------------------------------------------------------------
# sockets, vsock, retry
# ---------------------------------------------------------------------------
def test_parse_endpoints():
    assert sockets.parse_endpoint("127.0.0.1:9000") == sockets.TcpAddr("127.0.0.1", 9000)
    assert sockets.parse_endpoint("[::1]:9000") == sockets.TcpAddr("::1", 9000)
    assert sockets.parse_endpoint("vsock:3:5000") == sockets.VsockAddr(3, 5000)
    for bad in ("localhost:9000", "127.0.0.1", "1.2.3.4:70000", "::1:80", "vsock:x:1"):
        with pytest.raises(ValueError):
            sockets.parse_endpoint(bad)


def test_vsock_listen_where_the_kernel_allows():
    try:
        listener = sockets.listen(sockets.VsockAddr(sockets.VSOCK_CID_ANY, 0xFFFFFFFF))  # PORT_ANY
    except OSError as exc:
        pytest.skip(f"AF_VSOCK unavailable here: {exc}")
    assert listener.family == socket.AF_VSOCK
    ep = sockets.local_endpoint(listener)
    assert isinstance(ep, sockets.VsockAddr) and 0 < ep.port < 0xFFFFFFFF
    listener.close()


def test_connect_retry_error_names_target_and_attempts():
    from tests.helpers.common import free_port

    port = free_port()
    with pytest.raises(OSError, match=rf"TCP connect to 127.0.0.1:{port} failed after 3 attempt"):
        sockets.connect_retry(
            sockets.TcpAddr("127.0.0.1", port), RetryPolicy(max_retries=2, initial_delay=0.01)
        )
    with pytest.raises(OSError, match="after 1 attempt"):
        sockets.connect_retry(sockets.TcpAddr("127.0.0.1", port), RetryPolicy.none())


def test_connect_retry_reaches_a_late_listener():
    from tests.helpers.common import free_port

    port = free_port()

    def late():
        time.sleep(0.15)
        srv = sockets.listen(sockets.TcpAddr("127.0.0.1", port))
        conn = sockets.accept(srv, timeout=5)
        conn.close()
        srv.close()

    t = threading.Thread(target=late)
    t.start()
    s = sockets.connect_retry(
        sockets.TcpAddr("127.0.0.1", port), RetryPolicy(max_retries=20, initial_delay=0.02, max_delay=0.05)
    )
    s.close()
    t.join()


# ---------------------------------------------------------------------------
# echo server and client, as users run them
# ---------------------------------------------------------------------------
def test_echo_cli_end_to_end():
    from tests.helpers.common import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "echo-server",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        text=True,
    )
    try:
        assert "listening" in server.stdout.readline()
        # two clients one after another, then one that speaks garbage
        for _ in range(2):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cmlp.cli.main",
                    "echo-client",
                    "--connect",
                    f"127.0.0.1:{port}",
                    "--count",
                    "3",
                    "--tensor",
                ],
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.count(", ok)") == 3 and "tensor: activations F32 [4, 3] (ok)" in out.stdout
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"garbage" * 10)
            s.settimeout(5)
            assert s.recv(100) == b""  # closed, no crash
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cmlp.cli.main",
                "echo-client",
                "--connect",
                f"127.0.0.1:{port}",
                "--count",
                "1",
            ],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode in (0, -15)


def test_echo_client_unreachable_server_is_one_clean_line():
    from tests.helpers.common import free_port

    out = subprocess.run(
        [sys.executable, "-m", "cmlp.cli.main", "echo-client", "--connect", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
