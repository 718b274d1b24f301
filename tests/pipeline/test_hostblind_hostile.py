"""A hostile host on host-blind mode's new links, and a stage killed mid-generation.

The host forwards the client <-> stage 0 channel and may relay the feedback
link (last stage -> stage 0).  A frame-aware man in the middle drops,
replays, reorders, bit-flips or stalls frames on each; the client must get a
typed error (PipelineUnavailable) within its timeout (1.5 s here), and the
stages must keep serving: the next generation gives the right ids.
"""

import time

import pytest

from cmlp.client import Client, Finished, SamplingParams, TokenEvent
from cmlp.errors import GenerationError, PipelineUnavailable
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.model.synthetic import init_model
from cmlp.pipeline.gpt2 import Gpt2Executor
from cmlp.transport.sockets import parse_endpoint
from tests.helpers import mitm
from tests.helpers.hostblind_helpers import hb_manifest, hb_manifest_dict, served
from tests.helpers.model import PARITY, load_golden
from tests.helpers.pipeline import start_stage_process, stop_processes, write_manifest

SPLITS = [(0, 2), (2, 4)]
TIMEOUT = 1.5


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    model_dir = PARITY.write(tmp_path_factory.mktemp("parity"))
    golden = load_golden(PARITY, model_dir)
    return model_dir, golden["greedy_prompt"][0].tolist(), golden["greedy_ids"].tolist()


def generate_ids(client, prompt, n):
    ids = []
    for ev in client.generate(prompt, SamplingParams(max_tokens=n)):
        if isinstance(ev, TokenEvent):
            ids.append(ev.token_id)
    return ids


def serving_again(server, manifest, prompt, want, within=20.0):
    """The stages serve again (after the host restarted the session, if it had to)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return generate_ids(Client(str(server.address), manifest, timeout=5), prompt, len(want)) == want
        except GenerationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def attacked(client, prompt):
    """Run one generation under attack: (exception, seconds until it was raised)."""
    t0 = time.monotonic()
    with pytest.raises(PipelineUnavailable) as info:
        generate_ids(client, prompt, 40)
    return info.value, time.monotonic() - t0


# downstream frames stage 0 -> client: 0 hello, 1 Started, 2.. Tokens, then Finished
# upstream frames client -> stage 0: 0 hello, 1 confirmation, 2 Generate
CLIENT_ATTACKS = {
    "drop-token": dict(downstream=lambda i, f: b"" if i == 5 else f),
    "replay-token": dict(downstream=mitm.replay(5)),
    "reorder-tokens": dict(downstream=mitm.swap(5)),
    "flip-token": dict(downstream=mitm.flip_bit(5, -3)),
    "stall-tokens": dict(downstream=mitm.stall(5)),
    "flip-request": dict(upstream=mitm.flip_bit(2, 20)),
    "drop-request": dict(upstream=lambda i, f: b"" if i == 2 else f),
    "cut-request": dict(upstream=mitm.truncate_and_close(2)),
}


# fast tier: a dropped, a forged and a replayed frame; the other attacks are slow
@pytest.mark.fast_cases("drop-token", "flip-request", "replay-token")
@pytest.mark.parametrize("attack", list(CLIENT_ATTACKS))
def test_hostile_host_on_the_client_link(parity, attack, capsys):
    model_dir, prompt, golden = parity
    m = hb_manifest(2, splits=SPLITS, max_seq_len=512, hidden_dim=64)
    with served(m, [Gpt2Executor(model_dir, threads=1) for _ in SPLITS]) as (server, _):
        real = server.stage0
        proxy = mitm.MitmProxy((real.host, real.port), **CLIENT_ATTACKS[attack])
        server.stage0 = parse_endpoint(proxy.endpoint)  # the host forwards through it
        try:
            exc, took = attacked(Client(str(server.address), m, timeout=TIMEOUT), prompt)
        finally:
            server.stage0 = real
            proxy.close()
        assert serving_again(server, m, prompt, golden[:10])
    with capsys.disabled():
        print(f"\n  client link, {attack}: {type(exc).__name__} after {took:.2f} s: {exc}")


# the feedback link stage 1 -> stage 0 (stage 1 connects): upstream 0 hello,
# 1 confirmation, 2.. one Sampled per token
FEEDBACK_ATTACKS = {
    "drop-token": dict(upstream=lambda i, f: b"" if i == 5 else f),
    "replay-token": dict(upstream=mitm.replay(5)),
    "reorder-tokens": dict(upstream=mitm.swap(5)),
    "flip-token": dict(upstream=mitm.flip_bit(5, -3)),
    "stall-tokens": dict(upstream=mitm.stall(5)),
}


# slow: each case waits out the client's and stage 0's deadlines and a session restart (5-10 s);
# tamper detection on a link is fast in tests/transport and on the client link above
@pytest.mark.slow
@pytest.mark.parametrize("attack", list(FEEDBACK_ATTACKS))
def test_hostile_host_on_the_feedback_link(parity, attack, capsys):
    model_dir, prompt, golden = parity
    doc = hb_manifest_dict(2, splits=SPLITS, max_seq_len=512, hidden_dim=64)
    import json

    from cmlp.manifest import Manifest

    m = Manifest.from_json(json.dumps(doc))
    s0_in = m.stages[0].endpoint.data_in.endpoint
    proxy = mitm.MitmProxy((s0_in.host, s0_in.port), **FEEDBACK_ATTACKS[attack])
    options = HostBlindOptions(token_timeout=2.0)  # a stalled link ends the session
    try:
        with served(
            m,
            [Gpt2Executor(model_dir, threads=1) for _ in SPLITS],
            options,
            data_out_targets={1: parse_endpoint(proxy.endpoint)},
        ) as (server, _):
            exc, took = attacked(Client(str(server.address), m, timeout=TIMEOUT), prompt)
            proxy.upstream = proxy.downstream = mitm.passthrough  # later sessions pass
            assert serving_again(server, m, prompt, golden[:10])
    finally:
        proxy.close()
    if attack in ("replay-token", "flip-token"):  # detected on arrival, named
        assert "stage 1" in str(exc) and "feedback link" in str(exc)
    # a dropped or held-back token is a stall on a request-response link: the client's
    # deadline fires; stage 0's own (token_timeout) ends the session, the host restarts it
    with capsys.disabled():
        print(f"\n  feedback link, {attack}: {type(exc).__name__} after {took:.2f} s: {exc}")


# ---------------------------------------------------------------------------
# a stage killed mid-generation (stage processes, kill -9)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.mark.fast_cases("1")
@pytest.mark.parametrize("victim", [0, 1])
def test_killed_stage_mid_generation_gives_a_typed_error_naming_it(tiny, tmp_path, victim, capsys):
    from cmlp.attestation import MockProvider, MockVerifier
    from cmlp.hostblind.host import HostBlindServer
    from cmlp.manifest import Manifest
    from cmlp.pipeline.orchestrator import OrchestratorConfig
    from cmlp.transport import SessionConfig
    from tests.helpers.pipeline import FAST_RETRY

    doc = hb_manifest_dict(2, total_layers=4, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc)
    m = Manifest.load(path)
    procs = [start_stage_process(path, i, tiny, ["--persistent"]) for i in range(2)]
    cfg = OrchestratorConfig.development(
        MockProvider(),
        MockVerifier(),
        retry=FAST_RETRY,
        session=SessionConfig.development(handshake_timeout=10),
    )
    server = HostBlindServer(m, cfg, parse_endpoint("127.0.0.1:0"), health_interval=0.5)
    try:
        deadline = time.monotonic() + 60
        while True:  # the stages load their weights
            try:
                server.start()
                break
            except Exception:  # noqa: BLE001 - retried until up
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        client = Client(str(server.address), m, timeout=10)
        got = 0
        t0 = None
        with pytest.raises(PipelineUnavailable) as info:
            for ev in client.generate("The capital of France is", SamplingParams(max_tokens=1000)):
                got += 1
                if got == 5:
                    procs[victim].kill()
                    t0 = time.monotonic()
                assert not isinstance(ev, Finished)
        took = time.monotonic() - t0
    finally:
        server.close()
        stop_processes(procs)
    assert f"stage {victim}" in str(info.value)
    with capsys.disabled():
        print(f"\n  killed stage {victim}: {type(info.value).__name__} after {took:.2f} s: {info.value}")
