"""What `cmlp proxy` adds per streamed token: proxy SSE stream vs the client's own generate.

Two peers run side by side, interleaved run by run, and the medians are compared:

* direct: iterate ``generate()`` in this process (what `cmlp generate` does);
* proxy:  the same generation through `cmlp proxy` in its own process (uvicorn,
          one worker thread per generation, SSE), read with a lean HTTP client.

Fake mode (default; no pipeline needed): the backend is a contract-shaped client that
stamps each token's text with CLOCK_MONOTONIC at the moment it yields it, so the
reader measures exactly the latency the proxy adds per token (thread hand-off, event
loop, JSON, HTTP, loopback TCP).  Two regimes:
  paced:   one token every --pace-ms (like a real model): added latency per token;
  flood:   tokens as fast as the backend can yield: wall time per token, i.e. the
           proxy's CPU cost per token when it is the bottleneck.

Real mode (``--connect HOST:PORT --manifest M``, needs cmlp.client and a running
`cmlp serve`): the real client directly vs a `cmlp proxy` subprocess on the same
pipeline; compares the median inter-token gap and the total time per token.

    python bench/bench_proxy.py                       # fake backend
    python bench/bench_proxy.py --connect 127.0.0.1:7000 --manifest hb.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "bench-fake"


# --------------------------------------------------------------------------
# the stamping fake (contract-shaped)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple = ()


@dataclass(frozen=True)
class Tok:
    token_id: int
    text: str


@dataclass(frozen=True)
class Fin:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Info:
    model_name: str = MODEL
    max_seq_len: int = 1 << 20
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None


def _pace(seconds: float) -> None:
    # sleep most of it, spin the rest: a sleep alone overshoots by a scheduler tick
    end = time.monotonic() + seconds
    if seconds > 0.002:
        time.sleep(seconds - 0.0015)
    while time.monotonic() < end:
        pass


class StampClient:
    """Prompt "pace:<microseconds>": one token per pace; each token's text is its stamp."""

    def model_info(self):
        return Info()

    def close(self):
        pass

    def generate(self, prompt, params):
        pace = int(prompt.split(":", 1)[1]) / 1e6 if prompt.startswith("pace:") else 0.0
        return self._events(pace, params.max_tokens)

    def _events(self, pace, n):
        for i in range(n):
            if pace:
                _pace(pace)
            yield Tok(i, f" {time.monotonic_ns()}")
        yield Fin("length", 1, n)


def serve_fake(stack: str) -> None:
    sys.path.insert(0, ROOT)
    from cmlp.proxy.app import create_app
    from cmlp.proxy.backend import ClientBackend
    from cmlp.proxy.server import ProxyServer

    backend = ClientBackend(StampClient(), sampling_params=Params, finished=Fin)
    http, loop = stack.split("-") if stack != "auto" else ("auto", "auto")
    server = ProxyServer(create_app(backend), "127.0.0.1:0", log_level="error", http=http, loop=loop)
    print(f"READY {server.address}", flush=True)
    server.run()


def serve_hop() -> None:
    """The floor of any out-of-process proxy: stamps sent straight over one TCP socket."""
    import socket

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    print(f"READY 127.0.0.1:{lst.getsockname()[1]}", flush=True)
    while True:
        conn, _ = lst.accept()
        with conn, conn.makefile("rb") as rf:
            pace_us, n = map(int, rf.readline().split())
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for ev in StampClient()._events(pace_us / 1e6, n):
                if isinstance(ev, Tok):
                    conn.sendall(ev.text.encode() + b"\n")
            conn.sendall(b"END\n")


def stream_hop(address: str, pace_us: int, n: int, on_text) -> tuple[int, float]:
    import socket

    host, port = address.rsplit(":", 1)
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port))) as conn, conn.makefile("rb") as rf:
        conn.sendall(f"{pace_us} {n}\n".encode())
        got = 0
        while True:
            line = rf.readline()
            now = time.monotonic_ns()
            if not line or line == b"END\n":
                break
            on_text(line.decode().strip(), now)
            got += 1
    return got, time.perf_counter() - t0


# --------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------
def stream_proxy(address: str, body: dict, on_text) -> tuple[int, float]:
    """POST a streaming completion; call on_text(text, now_ns) per token chunk."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("CMLP_PROXY_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"proxy answered {resp.status}: {resp.read()[:300]!r}")
    n = 0
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        now = time.monotonic_ns()
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise SystemExit(f"error event: {chunk['error']}")
        for choice in chunk["choices"]:
            if choice["text"]:
                on_text(choice["text"], now)
                n += 1
    elapsed = time.perf_counter() - t0
    conn.close()
    return n, elapsed


def run_direct(client, prompt, params, on_text) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for ev in client.generate(prompt, params):
        if hasattr(ev, "text") and ev.text:
            on_text(ev.text, time.monotonic_ns())
            n += 1
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------
# fake mode
# --------------------------------------------------------------------------
def _spawn(*flags):
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *flags],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"{flags[0]} did not start")
    return proc, line.split()[1]


def bench_fake(args) -> None:
    proc, address = _spawn("--serve-fake", "--stack", args.stack)
    hop_proc, hop_address = _spawn("--serve-hop")
    try:
        direct = StampClient()

        def latencies(run):
            lat = []
            n, elapsed = run(lambda text, now: lat.append((now - int(text)) / 1e3))
            return lat, n, elapsed

        pace_prompt = f"pace:{int(args.pace_ms * 1000)}"
        results = {
            "paced": {"direct": [], "proxy": [], "hop": []},
            "flood": {"direct": [], "proxy": [], "hop": []},
        }
        # warm-up (imports, first connection, JIT-less but cache-warm)
        stream_proxy(
            address, {"model": MODEL, "prompt": "x", "max_tokens": 50, "stream": True}, lambda t, n: None
        )
        for _ in range(args.runs):
            for regime, prompt, n_tok in (
                ("paced", pace_prompt, args.paced_tokens),
                ("flood", "x", args.flood_tokens),
            ):
                body = {"model": MODEL, "prompt": prompt, "max_tokens": n_tok, "stream": True}
                lat_d, n_d, el_d = latencies(
                    lambda cb: run_direct(direct, prompt, Params(max_tokens=n_tok), cb)
                )
                lat_p, n_p, el_p = latencies(lambda cb: stream_proxy(address, body, cb))
                pace_us = int(prompt.split(":")[1]) if ":" in prompt else 0
                lat_h, n_h, el_h = latencies(lambda cb: stream_hop(hop_address, pace_us, n_tok, cb))
                assert n_d == n_p == n_h == n_tok, (n_d, n_p, n_h)
                results[regime]["hop"].append((statistics.median(lat_h), el_h / n_h * 1e6))
                results[regime]["direct"].append((statistics.median(lat_d), el_d / n_d * 1e6))
                results[regime]["proxy"].append((statistics.median(lat_p), el_p / n_p * 1e6))
    finally:
        for p in (proc, hop_proc):
            p.terminate()
            p.wait(10)

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    print(header(f"fake backend (contract-shaped; cmlp.client not used), uvicorn stack {args.stack}", args))
    p, f = results["paced"], results["flood"]
    print(f"paced, 1 token / {args.pace_ms} ms, {args.paced_tokens} tokens x {args.runs} runs:")
    print(
        f"  latency from yield to reader, median: direct {med(p['direct'], 0):8.1f} us   "
        f"proxy {med(p['proxy'], 0):8.1f} us"
    )
    print(
        f"  one plain TCP hop to another process (the floor of any out-of-process proxy): "
        f"{med(p['hop'], 0):.1f} us"
    )
    added = med(p["proxy"], 0) - med(p["direct"], 0)
    own = med(p["proxy"], 0) - med(p["hop"], 0)
    print(
        f"  => proxy adds {added:.1f} us = {added / 1000:.3f} ms per streamed token "
        f"(target <= 0.2 ms); {own:.1f} us of it beyond the plain hop"
    )
    print(f"flood, {args.flood_tokens} tokens x {args.runs} runs (proxy is the bottleneck):")
    print(
        f"  wall time per token, median:        direct {med(f['direct'], 1):8.1f} us   "
        f"proxy {med(f['proxy'], 1):8.1f} us   plain hop {med(f['hop'], 1):8.1f} us"
    )
    print(
        f"  => proxy costs {med(f['proxy'], 1) - med(f['direct'], 1):.1f} us per token at "
        f"saturation; ratio {med(f['proxy'], 1) / med(f['direct'], 1):.1f}x"
    )


# --------------------------------------------------------------------------
# real mode
# --------------------------------------------------------------------------
def bench_real(args) -> None:
    sys.path.insert(0, ROOT)
    from cmlp.client import Client, SamplingParams

    client = Client(args.connect, args.manifest, timeout=120)
    info = client.model_info()
    port_sock = __import__("socket").socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "proxy",
            "--connect",
            args.connect,
            "--manifest",
            args.manifest,
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        seen = []
        while not seen or "serving" not in seen[-1]:  # warnings may come first
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("the proxy did not start:\n" + "".join(seen))
            seen.append(line)
        address = f"127.0.0.1:{port}"
        prompt = "The capital of France is"
        rows = {"direct": [], "proxy": []}

        def gaps(run):
            stamps = []
            n, elapsed = run(lambda text, now: stamps.append(now))
            g = [(b - a) / 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
            return statistics.median(g), elapsed / n * 1e6, n

        body = {
            "model": info.model_name,
            "prompt": prompt,
            "max_tokens": args.real_tokens,
            "temperature": 0,
            "stream": True,
        }
        stream_proxy(address, dict(body, max_tokens=4), lambda t, n: None)  # warm-up
        for _ in range(args.runs):
            rows["direct"].append(
                gaps(lambda cb: run_direct(client, prompt, SamplingParams(max_tokens=args.real_tokens), cb))
            )
            rows["proxy"].append(gaps(lambda cb: stream_proxy(address, body, cb)))
    finally:
        proc.terminate()
        proc.wait(10)
        client.close()
    print(header(f"REAL pipeline via cmlp.client ({info.model_name} at {args.connect})", args))
    d, p = rows["direct"], rows["proxy"]
    gd, gp = statistics.median(r[0] for r in d), statistics.median(r[0] for r in p)
    td, tp = statistics.median(r[1] for r in d), statistics.median(r[1] for r in p)
    print(f"{args.real_tokens} tokens x {args.runs} runs, greedy:")
    print(f"  median inter-token gap:  direct {gd:9.1f} us   proxy {gp:9.1f} us   => +{gp - gd:.1f} us/token")
    print(
        f"  wall time per token:     direct {td:9.1f} us   proxy {tp:9.1f} us   "
        f"=> +{tp - td:.1f} us/token (includes one more process and TCP hop)"
    )


def header(mode: str, args) -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (StopIteration, OSError):
        cpu = "unknown CPU"
    return (
        f"bench_proxy: {mode}\nCPU: {cpu}, {os.cpu_count()} cores; proxy: 1 uvicorn "
        f"process (event loop + 1 thread per generation); medians of {args.runs} "
        "interleaved runs"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-hop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument(
        "--stack",
        default="auto",
        help="fake mode: uvicorn HTTP-loop pair, e.g. h11-asyncio or "
        "httptools-uvloop (default: auto, the best installed)",
    )
    ap.add_argument("--pace-ms", type=float, default=5.0)
    ap.add_argument("--paced-tokens", type=int, default=200)
    ap.add_argument("--flood-tokens", type=int, default=2000)
    ap.add_argument("--connect", help="real mode: `cmlp serve` address")
    ap.add_argument("--manifest", help="real mode: the host-blind manifest")
    ap.add_argument("--real-tokens", type=int, default=64)
    args = ap.parse_args()
    if args.serve_fake:
        serve_fake(args.stack)
    elif args.serve_hop:
        serve_hop()
    elif args.connect:
        if not args.manifest:
            ap.error("--connect needs --manifest")
        bench_real(args)
    else:
        bench_fake(args)


if __name__ == "__main__":
    main()
