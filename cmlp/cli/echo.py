"""``cmlp echo-server`` / ``cmlp echo-client``: the encrypted echo of the quick start.

Mock attestation and the Development profile by default: this demonstrates the
wire protocol and the encryption, not TEE identity.  ``--attestation`` takes
any kind (nitro, sev-snp, az-sev-snp, tdx): between two confidential VMs the
echo is a model-free check that attestation works both ways, and
``--expect-measurement IDX=HEX`` pins the peer.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np

from cmlp.attestation.base import ExpectedMeasurements
from cmlp.attestation.factory import (
    PEER_KINDS,
    add_tee_arguments,
    make_provider,
    make_verifier,
    parse_measurement,
)
from cmlp.cli.common import add_log_level, arg_type, stop_on_sigterm
from cmlp.errors import CmlpError
from cmlp.transport import (
    Data,
    ErrorMessage,
    Heartbeat,
    SecureChannel,
    SessionConfig,
    ShutdownMessage,
    TensorMessage,
    sockets,
)

log = logging.getLogger("cmlp.echo")
ENDPOINT = arg_type(sockets.parse_endpoint, "endpoint")
MEASUREMENT = arg_type(parse_measurement, "measurement")


def _add_attestation(p) -> None:
    p.add_argument(
        "--attestation",
        choices=PEER_KINDS,
        default="mock",
        help="this side's provider and the peer's verifier (default: mock)",
    )
    p.add_argument(
        "--expect-measurement",
        action="append",
        default=[],
        type=MEASUREMENT,
        metavar="IDX=HEX",
        help="pin the peer's measurement IDX (repeatable)",
    )
    add_tee_arguments(p)


def _attestation(args, **config_overrides):
    """(provider, verifier, session config) from the command line."""
    provider = make_provider(args.attestation)
    verifier = make_verifier(
        args.attestation, tdx_collateral_dir=args.tdx_collateral, tee_policy=args.tee_policy
    )
    config = SessionConfig.development(**config_overrides)
    if args.expect_measurement:
        config = config.with_measurements(ExpectedMeasurements(dict(args.expect_measurement)))
    return provider, verifier, config


def register(sub) -> None:
    p = sub.add_parser("echo-server", help="encrypted echo server (mock attestation by default)")
    p.add_argument(
        "--listen",
        required=True,
        type=ENDPOINT,
        help="address to listen on: IP:PORT, [V6]:PORT or vsock:CID:PORT",
    )
    p.add_argument(
        "--max-connections", type=int, default=128, help="concurrent sessions served (default: 128)"
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to finish the handshake (default: 10)",
    )
    _add_attestation(p)
    add_log_level(p, "info")
    p.set_defaults(func=run_server, prog_name="cmlp echo-server")

    c = sub.add_parser("echo-client", help="encrypted echo client (mock attestation by default)")
    c.add_argument(
        "--connect", required=True, type=ENDPOINT, help="server address: IP:PORT, [V6]:PORT or vsock:CID:PORT"
    )
    c.add_argument("--count", type=int, default=3, help="Data messages to send (default: 3)")
    c.add_argument("--tensor", action="store_true", help="also send a F32 [4, 3] tensor and check the echo")
    c.add_argument("--timeout", type=float, default=10.0, help="per-reply timeout in seconds")
    _add_attestation(c)
    add_log_level(c, "warning")
    c.set_defaults(func=run_client, prog_name="cmlp echo-client")


def _serve_one(sock, peer, attestation, slots) -> None:
    provider, verifier, config = attestation
    try:
        channel = SecureChannel.accept(sock, provider, verifier, config)
    except CmlpError as exc:
        log.warning("%s: handshake failed: %s", peer, exc)
        slots.release()
        return
    log.info("%s: session %s established", peer, channel.session_id.hex()[:16])
    echoed = 0
    try:
        while True:
            msg = channel.recv()
            if isinstance(msg, Data):
                channel.send(msg.payload)
            elif isinstance(msg, TensorMessage):
                channel.send_tensor(msg.tensor)
            elif isinstance(msg, ShutdownMessage):
                break
            elif isinstance(msg, ErrorMessage):
                log.warning("%s: peer error: %s", peer, msg.text)
                continue
            else:
                continue  # heartbeats need no answer
            echoed += 1
    except CmlpError as exc:
        log.info("%s: session ended: %s", peer, exc)
    finally:
        channel.close()
        slots.release()
        log.info("%s: closed after %d echoes", peer, echoed)


def run_server(args) -> int:
    attestation = _attestation(args, handshake_timeout=args.handshake_timeout)
    listener = sockets.listen(args.listen, backlog=max(16, args.max_connections))
    slots = threading.BoundedSemaphore(args.max_connections)
    stop_on_sigterm()
    print(f"echo-server listening on {sockets.local_endpoint(listener)}", flush=True)
    try:
        while True:
            slots.acquire()
            try:
                conn, peer = listener.accept()
            except BaseException:
                slots.release()
                raise
            sockets._prepare(conn)
            threading.Thread(target=_serve_one, args=(conn, peer, attestation, slots), daemon=True).start()
    except KeyboardInterrupt:
        print("echo-server: stopped", file=sys.stderr)
        return 0
    finally:
        listener.close()


def run_client(args) -> int:
    provider, verifier, config = _attestation(args)
    channel = SecureChannel.connect(sockets.connect(args.connect), provider, verifier, config)
    print(f"connected, session {channel.session_id.hex()[:16]}")
    try:
        for i in range(args.count):
            payload = f"hello {i}".encode()
            t0 = time.perf_counter()
            channel.send(payload)
            reply = _expect(channel, Data, args.timeout)
            rtt = (time.perf_counter() - t0) * 1e6
            status = "ok" if reply.payload == payload else "MISMATCH"
            print(f"echo {i}: {reply.payload.decode(errors='replace')!r} ({rtt:.0f} us, {status})")
            if reply.payload != payload:
                return 1
        if args.tensor:
            sent = np.arange(12, dtype=np.float32).reshape(4, 3)
            channel.send_tensor("activations", sent)
            back = _expect(channel, TensorMessage, args.timeout).tensor
            same = back.name == "activations" and np.array_equal(back.data, sent)
            print(
                f"tensor: {back.name} {back.dtype.name} {list(back.shape)} ({'ok' if same else 'MISMATCH'})"
            )
            if not same:
                return 1
        channel.shutdown()
    finally:
        channel.close()
    return 0


def _expect(channel, kind, timeout):
    while True:
        msg = channel.recv(timeout=timeout)
        if isinstance(msg, kind):
            return msg
        if isinstance(msg, Heartbeat):
            continue
        raise CmlpError(f"unexpected reply from server: {type(msg).__name__}")
