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
import platform
import socket
import statistics
import struct
import threading
import time

import numpy as np

from cmlp import _frame, _record
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.transport import SecureChannel, SessionConfig, TensorMessage, sockets
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
    rows.append(("frame header encode", fmt_time(timeit(
        lambda: _frame.encode_header(2, 1, 7, 4096), 20000, repeats)), "", ""))
    dec = _frame.FrameDecoder()

    def decode():
        dec.feed(frame)
        dec.next_frame()

    rows.append(("frame decode 4 KiB (feed + next_frame)", fmt_time(timeit(decode, 20000, repeats)),
                 "", ""))
    t = np.zeros((128, 768), np.float32)
    enc = _frame.encode_tensor("hidden_states", 0, t.shape, t)
    rows.append(("tensor sub-header decode [128,768] F32 (zero-copy)",
                 fmt_time(timeit(lambda: _frame.decode_tensor_header(enc), 20000, repeats)), "", ""))
    return rows


def bench_aead(repeats, sizes):
    rows = []
    for size in sizes:
        pt = np.frombuffer(os.urandom(size), np.uint8)
        buf = bytearray(13 + size + 16)
        sealer = _record.Sealer(KEY, SID)
        n_inner = max(1, min(2000, (64 << 20) // max(size, 1) // 4))

        def seal_open():
            # seal into the frame buffer, then open it in place (fresh opener: no replay state)
            sealer.seal_into(buf, 2, 1, pt)
            seq = sealer.next_sequence - 1
            o = _record.Opener(KEY, SID)
            o.open_in_place(seq, 2, 1, memoryview(buf)[13:])

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
        rows.append((f"seal + open {label}", fmt_time(ours),
                     f"{gbps(2 * size, ours)} (pysodium {fmt_time(ref)}, {ref / ours:.2f}x)",
                     f"memcpy {fmt_time(cp)}"))
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
        ch = SecureChannel.connect(sockets.connect(sockets.TcpAddr(*addr)), MockProvider(),
                                   MockVerifier(), cfg)
        samples.append(time.perf_counter() - t0)
        ch.close()
    stop.set()
    samples.sort()
    return [("mock handshake over loopback TCP (connect + 3 messages)",
             fmt_time(statistics.median(samples)),
             f"p95 {fmt_time(samples[int(0.95 * len(samples)) - 1])}", "")]


def bench_rtt(repeats, sizes):
    rows = []
    cfg = SessionConfig.development()
    for size in sizes:
        arr = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)
        # --- SecureChannel echo
        lst = _listener()
        addr = lst.getsockname()

        def secure_server():
            ch = SecureChannel.accept(sockets.accept(lst), MockProvider(), MockVerifier(), cfg)
            while True:
                try:
                    msg = ch.recv()
                except Exception:
                    return
                if isinstance(msg, TensorMessage):
                    ch.send_tensor(msg.tensor)
                else:
                    return

        threading.Thread(target=secure_server, daemon=True).start()
        ch = SecureChannel.connect(sockets.connect(sockets.TcpAddr(*addr)), MockProvider(),
                                   MockVerifier(), cfg)

        def secure_rt():
            ch.send_tensor("hidden_states", arr)
            ch.recv()

        # --- plain TCP echo with the same framing work (length prefix + payload)
        plst = _listener()
        paddr = plst.getsockname()
        payload = arr.tobytes()

        def plain_server():
            conn = sockets.accept(plst)
            buf = bytearray(len(payload) + 64)
            view = memoryview(buf)
            while True:
                got = 0
                while got < 4:
                    n = conn.recv_into(view[got:4])
                    if not n:
                        return
                    got += n
                ln = struct.unpack_from(">I", buf)[0]
                got = 0
                while got < ln:
                    n = conn.recv_into(view[4 + got:4 + ln])
                    if not n:
                        return
                    got += n
                conn.sendall(view[:4 + ln])

        threading.Thread(target=plain_server, daemon=True).start()
        pc = sockets.connect(sockets.TcpAddr(*paddr))
        rbuf = bytearray(len(payload) + 64)
        rview = memoryview(rbuf)
        msg = struct.pack(">I", len(payload)) + payload

        def plain_rt():
            pc.sendall(msg)
            got = 0
            while got < len(msg):
                got += pc.recv_into(rview[got:len(msg)])

        inner = 2000 if size <= 4096 else 200
        lat_s, lat_p = [], []
        for _ in range(repeats):   # interleave the two so noise hits both alike
            lat_s.append(timeit(secure_rt, inner, 1))
            lat_p.append(timeit(plain_rt, inner, 1))
        s, p = statistics.median(lat_s), statistics.median(lat_p)
        label = f"{size // 1024} KiB" if size < (1 << 20) else f"{size >> 20} MiB"
        rows.append((f"round trip {label} tensor, SecureChannel vs plain TCP", fmt_time(s),
                     f"plain {fmt_time(p)}", f"{s / p:.2f}x"))
        ch.close()
        pc.close()
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
    if args.only in (None, "codec"):
        rows += bench_codec(args.repeats)
    if args.only in (None, "aead"):
        rows += bench_aead(args.repeats, sizes)
    if args.only in (None, "handshake"):
        rows += bench_handshake(args.repeats)
    if args.only in (None, "rtt"):
        rows += bench_rtt(args.repeats, [3 * 1024, 1 << 20])
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"## cmlp transport benchmark\n")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; threads: 1 per side (client + echo thread); "
          f"medians of {args.repeats} runs; libsodium {_record.LIBSODIUM_VERSION}\n")
    print("| operation | cmlp | peer | ratio / note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
