"""Host-blind generation in process: stages in threads, HostBlindServer, cmlp.client.

The parity model's transformers greedy ids (tests/golden) are what reference
mode produces for every cut (test_pipeline_gpt2.py); host-blind mode must
produce them too, for 1, 2 and 3 stages, direct and relayed.
"""

import json
import threading
import time

import pytest

from cmlp.client import Client, Finished, SamplingParams, TokenEvent
from cmlp.errors import (
    ContextTooLong,
    GenerationError,
    InvalidRequestError,
    MissingField,
    RoleMismatch,
    ServerBusy,
    VerificationFailed,
)
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.manifest import Manifest
from cmlp.pipeline.gpt2 import Gpt2Executor, generate
from cmlp.tokenizer import load_tokenizer
from tests.helpers.hostblind_helpers import hb_manifest, served
from tests.helpers.model import PARITY, load_golden
from tests.helpers.pipeline import make_manifest, running_pipeline

SPLITS = {1: [(0, 4)], 2: [(0, 2), (2, 4)], 3: [(0, 1), (1, 3), (3, 4)]}
TOK = load_tokenizer()


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    model_dir = PARITY.write(tmp_path_factory.mktemp("parity"))
    golden = load_golden(PARITY, model_dir)
    return model_dir, golden["greedy_prompt"][0].tolist(), golden["greedy_ids"].tolist()


def executors(model_dir, n):
    return [Gpt2Executor(model_dir, threads=1) for _ in range(n)]


def manifest(n, relay=False):
    return hb_manifest(n, relay=relay, splits=SPLITS[n], max_seq_len=512, hidden_dim=64)


def run(client, prompt, **params):
    events = list(client.generate(prompt, SamplingParams(**params)))
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    return [e.token_id for e in events[:-1]], events[-1], events[:-1]


@pytest.mark.fast_cases("1-False", "3-True")
@pytest.mark.parametrize("n, relay", [(1, False), (2, False), (2, True), (3, False), (3, True)])
def test_greedy_ids_equal_reference_mode(parity, n, relay):
    model_dir, prompt, golden = parity
    m = manifest(n, relay)
    with served(m, executors(model_dir, n)) as (server, _):
        client = Client(str(server.address), m, timeout=20)
        ids, fin, _ = run(client, prompt, max_tokens=100)
        assert fin == Finished("length", len(prompt), 100)
        # a second generation in the same session resets every KV cache
        again, _, _ = run(client, prompt, max_tokens=30)
    assert ids == golden and again == golden[:30]
    assert len(set(ids)) >= 5


def test_reference_mode_run_side_by_side_gives_the_same_ids(parity):
    model_dir, prompt, _ = parity
    ref_m = make_manifest(2, splits=SPLITS[2], max_seq_len=512, hidden_dim=64)
    with running_pipeline(ref_m, executors(model_dir, 2)) as (orch, _):
        ref = generate(orch, prompt, 40).generated_ids
        orch.shutdown()
    m = manifest(2, relay=True)
    with served(m, executors(model_dir, 2)) as (server, _):
        ids, _, _ = run(Client(str(server.address), m), prompt, max_tokens=40)
    assert ids == ref


def test_seeded_sampling_is_reproducible_across_topologies_and_differs_across_seeds(parity):
    model_dir, prompt, golden = parity
    results = {}
    for n, relay in ((1, False), (3, True)):
        m = manifest(n, relay)
        with served(m, executors(model_dir, n)) as (server, _):
            c = Client(str(server.address), m)
            p = dict(max_tokens=40, temperature=1.0, top_k=50, top_p=0.95)
            a, _, _ = run(c, prompt, seed=11, **p)
            b, _, _ = run(c, prompt, seed=11, **p)
            other, _, _ = run(c, prompt, seed=12, **p)
            unseeded = [run(c, prompt, **p)[0] for _ in range(2)]
        assert a == b and a != other and a != golden[:40]
        assert unseeded[0] != unseeded[1]  # no seed: fresh randomness per request
        results[n] = a
    assert results[1] == results[3]  # same logits, same seed, same ids


def test_eos_and_stop_sequences_end_generation(parity):
    model_dir, prompt, golden = parity
    # EOS: pretend the 8th greedy token is the model's EOS id
    eos = golden[7]
    first = golden.index(eos)
    m = manifest(2)
    with served(m, executors(model_dir, 2), HostBlindOptions(eos_ids=(eos,))) as (server, _):
        c = Client(str(server.address), m)
        ids, fin, events = run(c, prompt, max_tokens=50)
        assert ids == golden[: first + 1] and fin.finish_reason == "eos"
        assert fin.completion_tokens == first + 1 and events[-1].text == ""
    m = manifest(2)
    with served(m, executors(model_dir, 2)) as (server, _):
        c = Client(str(server.address), m)
        # stop: a piece of the decoded greedy text; the output ends just before it
        text = TOK.decode(golden[:40])
        stop = text[25:29]
        cut = text.find(stop)
        assert cut > 0
        ids, fin, events = run(c, prompt, max_tokens=40, stop=("\x00never", stop))
        assert fin.finish_reason == "stop"
        assert "".join(e.text for e in events) == text[:cut]
        k = len(ids)
        assert (
            ids == golden[:k] and stop in TOK.decode(golden[:k]) and stop not in TOK.decode(golden[: k - 1])
        )
        # no stop hit: length, and the whole text is released
        ids, fin, events = run(c, prompt, max_tokens=12, stop=("\x00never",))
        assert fin.finish_reason == "length" and "".join(e.text for e in events) == TOK.decode(golden[:12])


def test_bad_requests_are_typed_errors_and_the_slot_is_freed(parity):
    model_dir, prompt, golden = parity
    m = manifest(2)
    with served(m, executors(model_dir, 2)) as (server, _):
        c = Client(str(server.address), m)
        with pytest.raises(ContextTooLong):  # found by the client (ids)
            list(c.generate(prompt, SamplingParams(max_tokens=510)))
        with pytest.raises(ContextTooLong):  # found by stage 0 (text)
            list(c.generate("hello there", SamplingParams(max_tokens=511)))
        with pytest.raises(InvalidRequestError):
            list(c.generate(prompt, SamplingParams(top_p=0.0)))
        with pytest.raises(GenerationError, match="outside|vocab|forward"):
            list(c.generate([600], SamplingParams(max_tokens=2)))  # beyond the model's vocab
        # early close cancels on the enclave side; the next generation is complete and right
        it = c.generate(prompt, SamplingParams(max_tokens=100))
        assert next(it).token_id == golden[0]
        it.close()
        ids, _, _ = run(c, prompt, max_tokens=20)
        assert ids == golden[:20]


class SlowExecutor(Gpt2Executor):
    """A stage that takes ``delay`` seconds per step (a slot stays taken for a while)."""

    def __init__(self, model_dir, delay):
        super().__init__(model_dir, threads=1)
        self.delay = delay

    def forward(self, *args):
        time.sleep(self.delay)
        return super().forward(*args)

    def forward_rows(self, *args):  # the batched step (docs/batching.md)
        time.sleep(self.delay)
        return super().forward_rows(*args)


def test_busy_when_the_queue_is_full_and_queued_clients_are_served(parity):
    model_dir, prompt, golden = parity
    m = manifest(1)
    with served(m, [SlowExecutor(model_dir, 0.02)], queue_size=1) as (server, _):
        c = Client(str(server.address), m, timeout=30)
        holder = c.generate(prompt, SamplingParams(max_tokens=100))
        assert next(holder).token_id == golden[0]  # the slot is taken
        waited = {}

        def queued():
            waited["ids"] = run(c, prompt, max_tokens=5)[0]

        t = threading.Thread(target=queued)
        t.start()
        time.sleep(0.3)  # the second client is queued
        with pytest.raises(ServerBusy):
            list(c.generate(prompt, SamplingParams(max_tokens=5)))
        rest = [e.token_id for e in holder if isinstance(e, TokenEvent)]
        t.join(30)
        assert [golden[0]] + rest == golden and waited["ids"] == golden[:5]


class RecordingMetrics:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw))


def test_metrics_hooks_see_counts_and_timings_only(parity):
    model_dir, prompt, _ = parity
    m = manifest(2)
    metrics = RecordingMetrics()
    with served(m, executors(model_dir, 2), metrics=metrics) as (server, _):
        run(Client(str(server.address), m), prompt, max_tokens=10)
        time.sleep(0.2)
    names = [c[0] for c in metrics.calls]
    assert names.count("request_started") == 1 and names.count("first_token") == 1
    assert names.count("request_finished") == 1 and names.count("token") >= 10
    assert ("set_stage_up", (0, True), {}) in metrics.calls
    for _name, args, kw in metrics.calls:
        for v in list(args) + list(kw.values()):
            assert (
                v is None
                or isinstance(v, (int, float, bool))
                or (isinstance(v, str) and v in ("busy", "unavailable"))
            )


def test_model_info_comes_from_the_manifest_and_attested_stage0(parity):
    model_dir, _, _ = parity
    m = manifest(2)
    with served(m, executors(model_dir, 2)) as (server, _):
        info = Client(str(server.address), m).model_info()
    assert info.model_name == m.model_name and info.max_seq_len == 512
    assert info.eos_token == "<|endoftext|>"  # the embedded GPT-2 tokenizer's
    assert info.chat_template is None  # GPT-2 has none


def test_client_refuses_a_stage0_without_the_pinned_measurements(parity):
    model_dir, prompt, golden = parity
    m = manifest(1)
    with served(m, executors(model_dir, 1)) as (server, _):
        pinned = m.to_json()
        pinned["stages"][0]["expected_measurements"] = {"0": "ab" * 48}
        pinned = Manifest.from_json(json.dumps(pinned))
        with pytest.raises((VerificationFailed, MissingField)):
            list(Client(str(server.address), pinned).generate(prompt, SamplingParams()))
        # a stage 0 of another pipeline (here: another model version) attests another role
        other = m.to_json()
        other["model_version"] = "2"
        with pytest.raises(RoleMismatch):
            list(
                Client(str(server.address), Manifest.from_json(json.dumps(other))).generate(
                    prompt, SamplingParams()
                )
            )
        # production needs real attestation and pins: refused before any I/O
        with pytest.raises(InvalidRequestError, match="production"):
            Client(str(server.address), m, profile="production", attestation="mock")
        with pytest.raises(InvalidRequestError, match="expected_measurements"):
            Client(str(server.address), m, profile="production")
        # the stage is still serving
        assert run(Client(str(server.address), m), prompt, max_tokens=5)[0] == golden[:5]
