"""Host-blind generation: 1, 2, 3 stages (relayed) vs reference mode 2-stage, side by side.

Every configuration is started once (persistent stage processes; for
host-blind a `cmlp serve` process too, relaying every inter-stage link and
the feedback link) on its own ports, then ``--runs`` rounds run one
generation per configuration in turn, so drifts of the shared machine hit
all alike.  Host-blind sessions are timed by the client (``cmlp.client`` in
this process: inter-arrival time of the tokens); reference-mode sessions by
cmlp-orch's own per-step latencies.  Medians over sessions; p50 ratios
against host-blind 1-stage.

After the timed rounds one traced session per host-blind configuration
(``CMLP_TRACE``) gives the per-token breakdown: compute per stage, seal+send
per stage, each hop (sent -> next stage has the input; last stage -> stage 0
on the feedback link) and stage 0's client step (decode, stop check, seal to
the client); overhead = token interval - summed compute.

    python bench/bench_hostblind.py [--model-dir model | --preset small] --runs 5 --tokens 32
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from _machine import cpu_name  # noqa: E402
from bench_pipeline import PROMPT, run_session, start_stages, wait_listening  # noqa: E402


def remap_ports(manifest: Path, offset: int, out_dir: Path) -> Path:
    """A copy of a shipped manifest with every TCP port of the stages moved by ``offset``."""
    doc = json.loads(manifest.read_text())
    for stage in doc["stages"]:
        for spec in stage["endpoint"].values():
            host, port = spec["addr"].rsplit(":", 1)
            spec["addr"] = f"{host}:{int(port) + offset}"
    out = out_dir / manifest.name
    out.write_text(json.dumps(doc))
    return out


HB = [
    ("hb 1-stage", "manifest_1stage_hostblind.json"),
    ("hb 2-stage relayed", "manifest_2stage_hostblind_relay.json"),
    ("hb 3-stage relayed", "manifest_3stage_hostblind_relay.json"),
]
REF = [("ref 2-stage relayed", "manifest_2stage_relay.json")]


def remap(manifest: Path, offset: int, out_dir: Path, cfg: dict) -> Path:
    """Ports moved by ``offset``; layers split evenly over the model's n_layer."""
    out = remap_ports(manifest, offset, out_dir)
    doc = json.loads(out.read_text())
    n, layers = len(doc["stages"]), cfg["n_layer"]
    bounds = [round(i * layers / n) for i in range(n + 1)]
    for i, st in enumerate(doc["stages"]):
        st["layer_start"], st["layer_end"] = bounds[i], bounds[i + 1]
    doc["total_layers"] = layers
    doc["activation_spec"]["hidden_dim"] = cfg["n_embd"]
    if "host_blind" in doc:
        c = doc["host_blind"]["client"]
        host, port = c["addr"].rsplit(":", 1)
        c["addr"] = f"{host}:{int(port) + offset}"
    out.write_text(json.dumps(doc))
    return out


def start_serve(manifest: Path, port: int, env):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "serve",
            "--manifest",
            str(manifest),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "--health-interval",
            "30",
        ],
        env=env,
    )


def hb_session(addr: str, manifest: Path, tokens: int) -> dict:
    from cmlp.client import Client, Finished, SamplingParams

    client = Client(addr, manifest, timeout=120)
    t0 = last = time.perf_counter()
    gaps = []
    ttft = None
    for ev in client.generate(PROMPT, SamplingParams(max_tokens=tokens)):
        now = time.perf_counter()
        if isinstance(ev, Finished):
            break
        if ttft is None:
            ttft = (now - t0) * 1000
        else:
            gaps.append((now - last) * 1000)
        last = now
    gaps.sort()
    return {"ttft": ttft, "p50": gaps[len(gaps) // 2], "avg": sum(gaps) / len(gaps)}


def breakdown(prefix: str, n: int) -> dict:
    """Median per-token parts (ms) from the stages' trace files (decode steps only)."""
    ev = collections.defaultdict(list)
    for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
        for line in f.read_text().splitlines():
            t, _, name = line.split()
            if name.startswith("hb."):
                ev[name].append(int(t) / 1e6)
    s = lambda i, k: ev[f"hb.stage{i}.{k}"]  # noqa: E731
    # the last lines may be missing (a stage stopped right after its final send)
    steps = min(len(v) for v in ev.values())
    parts = collections.defaultdict(list)
    # a receiver often runs before its sender logs "sent" (one wake-up on a busy core), so
    # each link is timed from the sender's last event before sealing to the receiver's input
    for k in range(1, steps):
        total = s(0, "token_out")[k] - s(0, "token_out")[k - 1]
        comp = [s(0, "forward_done")[k] - s(0, "token_out")[k - 1]]
        parts["stage 0 compute"].append(comp[0])
        if n == 1:
            parts["stage 0 sample+emit to client"].append(s(0, "token_out")[k] - s(0, "forward_done")[k])
        else:
            prev = s(0, "forward_done")[k]
            for i in range(1, n):
                parts[f"link {i - 1}->{i} (seal, send, wake, open)"].append(s(i, "input")[k] - prev)
                comp.append(s(i, "forward_done")[k] - s(i, "input")[k])
                parts[f"stage {i} compute"].append(comp[-1])
                prev = s(i, "forward_done")[k]
            parts[f"stage {n - 1} sampling"].append(s(n - 1, "sampled")[k] - prev)
            parts[f"feedback link {n - 1}->0"].append(s(0, "token_in")[k] - s(n - 1, "sampled")[k])
            parts["stage 0 emit to client"].append(s(0, "token_out")[k] - s(0, "token_in")[k])
        parts["token interval"].append(total)
        parts["overhead (interval - compute)"].append(total - sum(comp))
    return {k: statistics.median(v) for k, v in parts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument(
        "--preset", default="small", help="model written when --model-dir is absent (default: small)"
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_hb_"))
    model_dir = Path(args.model_dir) if args.model_dir else tmp / "model"
    if not (model_dir / "config.json").is_file():
        from cmlp.model.synthetic import init_model

        init_model(model_dir, preset=args.preset)
    cfg = json.loads((model_dir / "config.json").read_text())
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    procs, manifests, addrs = [], {}, {}
    results = {name: [] for name, _ in HB + REF}
    try:
        for k, (name, file) in enumerate(HB + REF):
            d = tmp / f"c{k}"
            d.mkdir()
            manifests[name] = remap(REPO / "manifests" / file, 1000 * (k + 1), d, cfg)
            p, ports = start_stages(manifests[name], model_dir, args.threads)
            procs += p
            wait_listening(ports)
            if name.startswith("hb"):
                port = 7500 + 1000 * (k + 1)  # clear of the stages' 9000+offset ports
                procs.append(start_serve(manifests[name], port, env))
                addrs[name] = f"127.0.0.1:{port}"
                wait_listening([port])
        for r in range(args.runs + 1):  # round 0 warms up and is discarded
            for name, _ in HB + REF:
                print(f"round {r}: {name}", file=sys.stderr, flush=True)
                if name.startswith("hb"):
                    m = hb_session(addrs[name], manifests[name], args.tokens)
                else:
                    m = run_session(manifests[name], args.tokens, args.threads, tmp / "lat.json")
                if r:
                    results[name].append(m)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    # traced sessions: fresh processes with CMLP_TRACE set
    traces = {}
    for k, (name, _file) in enumerate(HB):
        prefix = str(tmp / f"trace{k}")
        env_t = dict(env, CMLP_TRACE=prefix)
        m = manifests[name]
        os.environ["CMLP_TRACE"] = prefix
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cmlp.cli.stage",
                    "--manifest",
                    str(m),
                    "--stage-idx",
                    str(i),
                    "--model-dir",
                    str(model_dir),
                    "--threads",
                    str(args.threads),
                    "--persistent",
                    "--log-level",
                    "error",
                ],
                env=env_t,
            )
            for i in range(int(name.split()[1][0]))
        ]
        port = 7500 + 1000 * (k + 1)  # clear of the stages' 9000+offset ports
        procs.append(start_serve(m, port, env))
        try:
            wait_listening([port], 300)
            hb_session(f"127.0.0.1:{port}", m, 4 * args.tokens)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        traces[name] = breakdown(prefix, int(name.split()[1][0]))
    summary = {
        n: {k: statistics.median(s[k] for s in ss) for k in ("ttft", "p50")} for n, ss in results.items()
    }
    cpu = cpu_name()
    base = summary["hb 1-stage"]["p50"]
    names = list(summary)
    print("## Host-blind generation benchmark\n")
    print("| Metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print("| TTFT (ms) | " + " | ".join(f"{summary[n]['ttft']:.2f}" for n in names) + " |")
    print("| token p50 (ms) | " + " | ".join(f"{summary[n]['p50']:.3f}" for n in names) + " |")
    print("| p50 vs hb 1-stage | " + " | ".join(f"{summary[n]['p50'] / base:.3f}x" for n in names) + " |")
    ref = [s.get("overhead") for s in results["ref 2-stage relayed"]]
    print(
        f"\nReference mode 2-stage relayed, pipeline overhead p50 (latency - stage compute): "
        f"{statistics.median(ref):.3f} ms/token"
    )
    print("\n### Per-token breakdown (CMLP_TRACE, medians over decode steps, ms)\n")
    keys = []
    for t in traces.values():
        keys += [k for k in t if k not in keys]
    print("| part | " + " | ".join(traces) + " |")
    print("|---|" + "---|" * len(traces))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{t[key]:.3f}" if key in t else "" for t in traces.values()) + " |")
    print(
        f"\n**Config**: {cfg.get('n_layer')} layers, n_embd {cfg.get('n_embd')}, synthetic "
        f"weights; {args.threads} BLAS threads per stage; {args.runs} rounds (medians), "
        f"{args.tokens} tokens per session; TCP loopback, every link relayed by the host; "
        f"mock attestation"
    )
    print(f"**CPU**: {cpu}, {os.cpu_count()} cores (shared with other work while measured)")


if __name__ == "__main__":
    main()
