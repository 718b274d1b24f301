"""What one pipeline hop costs the operating system on this machine, without cmlp.

Two probes with plain sockets, after the sender has been busy (or asleep)
for 10 ms, as a stage is between tokens:

* wake-up latency: a process blocked in ``recv`` is woken by a 8-byte send;
  the time from the send to its return from ``recv``;
* cold send: the duration of the ``send`` call itself, for TCP and
  AF_UNIX, against the same call back to back.

    python bench/bench_wakeup.py
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import time

N = 200


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def wake_latency(spin: bool) -> float:
    """Median microseconds from a send to the blocked receiver's return from recv."""
    a, b = socket.socketpair()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        a.close()
        lat = []
        for _ in range(N):
            sent = struct.unpack("<q", b.recv(8))[0]
            lat.append((time.monotonic_ns() - sent) / 1000)
        os.write(report_w, struct.pack("<d", statistics.median(lat)))
        os._exit(0)
    b.close()
    for _ in range(N):
        busy(0.01) if spin else time.sleep(0.01)
        a.send(struct.pack("<q", time.monotonic_ns()))
    value = struct.unpack("<d", os.read(report_r, 8))[0]
    os.waitpid(pid, 0)
    a.close()
    return value


def send_cost(family: str, idle: bool) -> float:
    if family == "unix":
        c, peer = socket.socketpair()
    else:
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        c = socket.create_connection(lst.getsockname())
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer, _ = lst.accept()
    costs = []
    for i in range(N):
        if idle:
            busy(0.01)
        t0 = time.perf_counter()
        c.send(b"x" * 100)
        costs.append((time.perf_counter() - t0) * 1e6)
        if i % 50 == 49:
            peer.recv(1 << 20)
    c.close()
    peer.close()
    return statistics.median(costs)


def main():
    print("## Operating-system cost of a hop (plain sockets, medians of 200)\n")
    print("| probe | us |")
    print("|---|---|")
    for spin, label in ((False, "sender slept 10 ms"), (True, "sender computed 10 ms")):
        print(f"| wake-up latency of a blocked receiver, {label} | {wake_latency(spin):.1f} |")
    for fam in ("tcp", "unix"):
        print(f"| {fam} send() after 10 ms of computing | {send_cost(fam, True):.1f} |")
        print(f"| {fam} send() back to back | {send_cost(fam, False):.1f} |")
    print(
        f"\n{os.cpu_count()} CPUs; the cmlp pipeline pays the first two rows once per hop and "
        "the cold send once per message a stage sends per token."
    )


if __name__ == "__main__":
    main()
