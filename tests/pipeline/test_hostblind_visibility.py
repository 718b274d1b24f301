"""What the host sees in host-blind mode: nothing of the prompt, its ids or the generated ids.

Stages and `cmlp serve` run as processes (2 stages, every inter-stage link and
the feedback link relayed by the host, every forwarded byte captured).  With
a secret prompt, the test scans the bytes the host forwarded and the memory
of the `cmlp serve` process (/proc/PID/mem, every readable mapping) during
and after a generation for the prompt text, the prompt ids and the generated
ids, each in several encodings.  Positive control: the same scan of stage 0's
memory finds the prompt (so the scanner can find what it looks for).  The
test prints what it scanned.
"""

import json
import struct
import subprocess
import sys

import pytest

from cmlp.client import Client, Finished, SamplingParams, TokenEvent
from cmlp.model.synthetic import init_model
from tests.helpers.hostblind_helpers import hb_manifest_dict
from tests.helpers.pipeline import cli_env, free_ports, start_stage_process, stop_processes, write_manifest

SECRET = "The launch code for the vault is swordfish 7731 alpha"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")


def encodings(ids):
    """A token-id sequence as a host could hold it: packed u32/i64, decimal lists."""
    return {
        "u32": struct.pack(f"<{len(ids)}I", *ids),
        "i64": struct.pack(f"<{len(ids)}q", *ids),
        "json": ",".join(map(str, ids)).encode(),
        "repr": ", ".join(map(str, ids)).encode(),
    }


def patterns(prompt_ids, generated):
    pats = {
        "prompt text": SECRET.encode(),
        "prompt text (utf-16)": SECRET.encode("utf-16-le"),
        "secret word": b"swordfish 7731",
    }
    for kind, raw in encodings(prompt_ids).items():
        pats[f"prompt ids ({kind})"] = raw
    for kind, raw in encodings(generated[:6]).items():
        pats[f"generated ids ({kind})"] = raw
    return pats


def read_memory(pid):
    """Every readable mapping of ``pid``: (bytes scanned, list of chunks)."""
    chunks, total = [], 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            chunks.append(data)
            total += len(data)
    return total, chunks


def scan(chunks, pats):
    return sorted(name for name, raw in pats.items() if any(raw in c for c in chunks))


@pytest.mark.slow  # stage and serve processes, 300 tokens, /proc memory scans
def test_host_never_holds_the_prompt_or_the_ids(tiny, tmp_path, capsys):
    doc = hb_manifest_dict(2, total_layers=4, relay=True, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc)
    (port,) = free_ports(1)
    capture = str(tmp_path / "cap_")
    procs = [start_stage_process(path, i, tiny, ["--persistent"]) for i in range(2)]
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "serve",
            "--manifest",
            str(path),
            "--listen",
            f"127.0.0.1:{port}",
            "--relay-capture",
            capture,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    procs.append(serve)
    report = []
    try:
        import socket

        from tests.helpers import mitm

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert mitm.wait_until(up, 90), serve.stderr.read1().decode() if serve.poll() else ""
        client = Client(f"127.0.0.1:{port}", path, timeout=30)
        prompt_ids, generated = [], []
        it = client.generate(SECRET, SamplingParams(max_tokens=300), on_prompt_ids=prompt_ids.extend)
        for ev in it:  # pause mid-generation and scan the host
            generated.append(ev.token_id)
            if len(generated) == 20:
                break_at = ev
                break
        assert isinstance(break_at, TokenEvent)
        during_bytes, chunks = read_memory(serve.pid)
        pats = None  # built once the ids are known
        rest = [ev for ev in it]
        assert isinstance(rest[-1], Finished) and rest[-1].completion_tokens == 300
        generated += [ev.token_id for ev in rest[:-1]]
        pats = patterns(prompt_ids, generated)
        found_during = scan(chunks, pats)
        del chunks
        after_bytes, chunks = read_memory(serve.pid)
        found_after = scan(chunks, pats)
        del chunks
        forwarded = {}
        for f in sorted(tmp_path.glob("cap_*.bin")):
            forwarded[f.name] = f.read_bytes()
        found_wire = scan(list(forwarded.values()), pats)
        # positive control: stage 0 (trusted, holds the prompt) is found by the same scan
        ctl_bytes, chunks = read_memory(procs[0].pid)
        found_stage0 = scan(chunks, pats)
        del chunks
        report = [
            f"patterns: {len(pats)} ({', '.join(pats)})",
            f"prompt: {len(prompt_ids)} ids; generated: {len(generated)} ids",
            f"cmlp serve memory during generation: {during_bytes / 1e6:.1f} MB -> "
            f"found {found_during or 'nothing'}",
            f"cmlp serve memory after generation:  {after_bytes / 1e6:.1f} MB -> "
            f"found {found_after or 'nothing'}",
            "forwarded bytes: "
            + ", ".join(f"{k} {len(v)} B" for k, v in forwarded.items())
            + f" -> found {found_wire or 'nothing'}",
            f"positive control, stage 0 memory: {ctl_bytes / 1e6:.1f} MB -> found {found_stage0}",
        ]
        assert {"cap_client_up.bin", "cap_client_down.bin"} <= set(forwarded)
        assert any(k.startswith("cap_1_") for k in forwarded)  # the feedback relay
        assert sum(len(v) for v in forwarded.values()) > 300 * 16
        assert found_during == [] and found_after == [] and found_wire == []
        assert "prompt text" in found_stage0
    finally:
        stop_processes(procs)
        with capsys.disabled():
            print("\n  host visibility scan:\n    " + "\n    ".join(report))
    (tmp_path / "visibility.json").write_text(json.dumps(report))
