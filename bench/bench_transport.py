"""Transport microbenchmarks: frame codec, AEAD, handshake, loopback round trips.

Every row compares cmlp with a peer run side by side in this process:
plain libsodium through pysodium (one Python call, new bytes out), a memcpy
of the same size (numpy copy), and plain length-prefixed TCP for the round
trips.  Figures are medians of repeated runs; this machine is shared, so
read the ratios, not the absolute numbers.

    python bench/bench_transport.py [--repeats 7] [--quick]

Profile the hot path with perf (symbols are kept in the extensions):

    perf record -g python bench/bench_transport.py --only rtt && perf report
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import threading
import time

import numpy as np
from _machine import cpu_name  # bench/ is the script's own directory

from cmlp import _frame, _record
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.transport import SecureChannel, SessionConfig, sockets
from cmlp.transport.sodium import pysodium

KEY = os.urandom(32)
SID = os.urandom(32)


def timeit(fn, inner: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` batches of ``inner`` calls."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def fmt_time(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e3:.2f} ms"


def gbps(nbytes: int, s: float) -> str:
    return f"{nbytes / s / 1e9:.2f} GB/s"


# ---------------------------------------------------------------------------
def bench_codec(repeats):
    rows = []
    payload = os.urandom(4096)
    frame = _frame.encode_frame(2, 1, 7, payload)
    rows.append(
        (
            "frame header encode",
            fmt_time(timeit(lambda: _frame.encode_header(2, 1, 7, 4096), 20000, repeats)),
            "",
            "",
        )
    )
    dec = _frame.FrameDecoder()

    def decode():
        dec.feed(frame)
        dec.next_frame()

    rows.append(("frame decode 4 KiB (feed + next_frame)", fmt_time(timeit(decode, 20000, repeats)), "", ""))
    t = np.zeros((128, 768), np.float32)
    enc = _frame.encode_tensor("hidden_states", 0, t.shape, t)
    rows.append(
        (
            "tensor sub-header decode [128,768] F32 (zero-copy)",
            fmt_time(timeit(lambda: _frame.decode_tensor_header(enc), 20000, repeats)),
            "",
            "",
        )
    )
    return rows


def bench_aead(repeats, sizes):
    rows = []
    for size in sizes:
        pt = np.frombuffer(os.urandom(size), np.uint8)
        buf = bytearray(13 + size + 16)
        sealer = _record.Sealer(KEY, SID)
        opener = _record.Opener(KEY, SID)
        payload = memoryview(buf)[13:]
        n_inner = max(1, min(2000, (64 << 20) // max(size, 1) // 4))

        def seal_open():
            # seal into the frame buffer, then open it in place (sequence keeps increasing)
            sealer.seal_into(buf, 2, 1, pt)
            opener.open_in_place(sealer.next_sequence - 1, 2, 1, payload)

        aad = bytes(43)
        nonce = bytes(12)
        pt_bytes = pt.tobytes()

        def pysodium_roundtrip():
            ct = pysodium.crypto_aead_chacha20poly1305_ietf_encrypt(pt_bytes, aad, nonce, KEY)
            pysodium.crypto_aead_chacha20poly1305_ietf_decrypt(ct, aad, nonce, KEY)

        dst = np.empty_like(pt)

        def memcpy():
            np.copyto(dst, pt)

        ours = timeit(seal_open, n_inner, repeats)
        ref = timeit(pysodium_roundtrip, n_inner, repeats)
        cp = timeit(memcpy, n_inner, repeats)
        label = f"{size // 1024} KiB" if size < (1 << 20) else f"{size >> 20} MiB"
        if size == (32 << 20) - 16:
            label = "32 MiB - 16 B (largest frame)"
        rows.append(
            (
                f"seal + open {label}",
                fmt_time(ours),
                f"pysodium encrypt + decrypt {fmt_time(ref)} ({ref / ours:.2f}x slower)",
                f"{gbps(size, ours / 2)} per operation; memcpy {fmt_time(cp)}",
            )
        )
    return rows


def _listener():
    return sockets.listen(sockets.TcpAddr("127.0.0.1", 0))


def bench_handshake(repeats):
    cfg = SessionConfig.development()
    lst = _listener()
    addr = lst.getsockname()
    stop = threading.Event()

    def server():
        while not stop.is_set():
            try:
                conn = sockets.accept(lst, timeout=1)
            except Exception:
                continue
            try:
                SecureChannel.accept(conn, MockProvider(), MockVerifier(), cfg).close()
            except Exception:
                pass

    threading.Thread(target=server, daemon=True).start()
    samples = []
    for _ in range(max(repeats * 10, 50)):
        t0 = time.perf_counter()
        ch = SecureChannel.connect(
            sockets.connect(sockets.TcpAddr(*addr)), MockProvider(), MockVerifier(), cfg
        )
        samples.append(time.perf_counter() - t0)
        ch.close()
    stop.set()
    samples.sort()
    return [
        (
            "mock handshake over loopback TCP (connect + 3 messages)",
            fmt_time(statistics.median(samples)),
            f"p95 {fmt_time(samples[int(0.95 * len(samples)) - 1])}",
            "",
        )
    ]


PLAIN_ECHO = r"""
import socket, struct, sys
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0))
lst.listen()
print(lst.getsockname()[1], flush=True)
conn, _ = lst.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray(64 << 20)
view = memoryview(buf)
while True:
    got = 0
    while got < 4:
        n = conn.recv_into(view[got:4])
        if not n:
            sys.exit()
        got += n
    ln = struct.unpack_from(">I", buf)[0]
    got = 0
    while got < ln:
        got += conn.recv_into(view[4 + got:4 + ln])
    conn.sendall(view[:4 + ln])
"""


def bench_rtt(repeats, sizes):
    """Round trips against echo servers in other processes, as the pipeline runs.

    The peer is plain length-prefixed TCP echoed by a minimal Python process;
    both clients run in this process and are measured in alternation.
    """
    import subprocess
    import sys

    rows = []
    cfg = SessionConfig.development()
    # Every process on one core: on a VM a wake-up across cores costs 40-100 us
    # (an IPI to a halted vCPU) and which core the scheduler picks swings the
    # result 3x; on one core both peers pay the same cheap context switch.
    cpu = {min(os.sched_getaffinity(0))}
    os.sched_setaffinity(0, cpu)
    secure_srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "echo-server",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    plain_srv = subprocess.Popen([sys.executable, "-c", PLAIN_ECHO], stdout=subprocess.PIPE, text=True)
    try:
        secure_port = int(secure_srv.stdout.readline().rsplit(":", 1)[1])
        plain_port = int(plain_srv.stdout.readline())
        ch = SecureChannel.connect(
            sockets.connect(sockets.TcpAddr("127.0.0.1", secure_port)), MockProvider(), MockVerifier(), cfg
        )
        pc = sockets.connect(sockets.TcpAddr("127.0.0.1", plain_port))
        for size in sizes:
            arr = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)
            payload = arr.tobytes()
            msg = struct.pack(">I", len(payload)) + payload
            rview = memoryview(bytearray(len(msg)))

            def secure_rt():
                ch.send_tensor("hidden_states", arr)
                ch.recv()

            def plain_rt():
                pc.sendall(msg)
                got = 0
                while got < len(msg):
                    got += pc.recv_into(rview[got : len(msg)])

            inner = 500 if size <= 4096 else 50
            samples_s, samples_p = [], []
            for _ in range(repeats):  # alternate so machine noise hits both alike
                for fn, out in ((secure_rt, samples_s), (plain_rt, samples_p)):
                    fn()
                    for _ in range(inner):
                        t0 = time.perf_counter()
                        fn()
                        out.append(time.perf_counter() - t0)
            s, p = statistics.median(samples_s), statistics.median(samples_p)
            label = f"{size // 1024} KiB" if size < (1 << 20) else f"{size >> 20} MiB"
            rows.append(
                (
                    f"round trip {label} tensor, SecureChannel vs plain TCP (p50)",
                    fmt_time(s),
                    f"plain {fmt_time(p)}",
                    f"{s / p:.2f}x",
                )
            )
        ch.close()
        pc.close()
    finally:
        secure_srv.terminate()
        plain_srv.kill()
        os.sched_setaffinity(0, range(os.cpu_count()))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="skip the 32 MiB AEAD row")
    ap.add_argument("--only", choices=["codec", "aead", "handshake", "rtt"])
    args = ap.parse_args()
    sizes = [3 * 1024, 64 * 1024, 1 << 20] + ([] if args.quick else [32 << 20])
    sizes[-1] = sizes[-1] - (16 if sizes[-1] == 32 << 20 else 0)
    rows = []
    parts = [
        ("codec", lambda: bench_codec(args.repeats)),
        ("aead", lambda: bench_aead(args.repeats, sizes)),
        ("handshake", lambda: bench_handshake(args.repeats)),
        ("rtt", lambda: bench_rtt(args.repeats, [3 * 1024, 1 << 20])),
    ]
    chosen = [(name, run) for name, run in parts if args.only in (None, name)]
    for k, (name, run) in enumerate(chosen, 1):
        print(f"[{k}/{len(chosen)}] {name} ({args.repeats} runs) ...", file=sys.stderr, flush=True)
        rows += run()
    cpu = cpu_name()
    print("## cmlp transport benchmark\n")
    print(
        f"CPU: {cpu}, {os.cpu_count()} cores; one thread per side (round trips: echo "
        f"servers in their own processes, all pinned to one core); "
        f"medians of {args.repeats} runs; libsodium {_record.LIBSODIUM_VERSION}\n"
    )
    print("| operation | cmlp | peer | ratio / note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
