"""Continuous batching (issue 14, docs/batching.md): many clients at once through 1-3 stages.

Every concurrent output must equal the same request run alone (greedy ids exactly, seeded
sampling exactly); the executors record the largest batch they ran, so a test that never
actually batched fails instead of passing vacuously.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from contextlib import contextmanager

import pytest

from cmlp.client import Client, Finished, SamplingParams, TokenEvent
from cmlp.errors import GenerationError, PipelineUnavailable, ServerBusy
from cmlp.hostblind.host import HostBlindServer
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.manifest import Manifest
from cmlp.model.synthetic import init_model
from cmlp.pipeline.gpt2 import Gpt2Executor
from cmlp.transport.sockets import parse_endpoint
from cmlp.transport.wire import DType
from tests.helpers.hostblind_helpers import hb_manifest, hb_manifest_dict, host_config
from tests.helpers.model import PARITY
from tests.helpers.pipeline import (
    StageThread,
    start_stage_process,
    stop_processes,
    write_manifest,
)

SPLITS = {1: [(0, 4)], 2: [(0, 2), (2, 4)], 3: [(0, 1), (1, 3), (3, 4)]}

# token ids of the parity model (vocab 512), lengths 1..40
PROMPTS = [
    [int(t) for t in random.Random(i).choices(range(512), k=n)]
    for i, n in enumerate((5, 1, 12, 3, 40, 7, 21, 2))
]
PARAMS = [
    SamplingParams(max_tokens=12),
    SamplingParams(max_tokens=20, temperature=0.8, seed=1),
    SamplingParams(max_tokens=7, temperature=1.2, top_k=20, seed=2),
    SamplingParams(max_tokens=25, temperature=0.9, top_p=0.8, seed=3),
    SamplingParams(max_tokens=3),
    SamplingParams(max_tokens=16, temperature=0.7, top_k=5, top_p=0.9, seed=4),
    SamplingParams(max_tokens=30),
    SamplingParams(max_tokens=9, temperature=1.0, seed=5),
]


class CountingExecutor(Gpt2Executor):
    """Records the largest batched forward; an optional delay keeps sequences overlapping."""

    def __init__(self, model_dir, delay=0.0):
        super().__init__(model_dir, threads=1)
        self.delay = delay
        self.max_rows = 0
        self.calls = []  # (rows, tokens per row) of every forward
        self.lens = []  # the tokens of each row, of every forward
        self.dtypes = set()  # wire dtypes of the rows it ran

    def forward_rows(self, seqs, rows):
        self.max_rows = max(self.max_rows, len(rows))
        self.dtypes.update(r.dtype for r in rows)
        self.calls.append((len(rows), int(rows[0].shape[1])))
        self.lens.append(tuple(int(r.shape[1]) for r in rows))
        if self.delay:
            time.sleep(self.delay)
        return super().forward_rows(seqs, rows)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


def manifest(n, relay=False):
    return hb_manifest(n, relay=relay, splits=SPLITS[n], max_seq_len=512, hidden_dim=64)


@contextmanager
def served_many(
    m, executors, *, slots=8, concurrency=8, queue_size=8, admission_queue=8, health_interval=0.5, **opts
):
    options = HostBlindOptions(slots=slots, admission_queue=admission_queue, **opts)
    stages = [StageThread(m, i, ex, persistent=True, hostblind=options) for i, ex in enumerate(executors)]
    server = HostBlindServer(
        m,
        host_config(),
        parse_endpoint("127.0.0.1:0"),
        queue_size=queue_size,
        health_interval=health_interval,
        concurrency=concurrency,
    )
    try:
        server.start()
        yield server
    finally:
        server.close()
        for s in stages:
            s.stop()


def eventually(cond, within=5.0) -> bool:
    """Slots downstream are freed when End reaches them, just after the client's Finished."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run(client, prompt, params):
    events = list(client.generate(prompt, params))
    assert isinstance(events[-1], Finished)
    return [e.token_id for e in events[:-1] if isinstance(e, TokenEvent)], events[-1].finish_reason


def run_concurrently(fn, n):
    """fn(i) in n threads started together; returns results (or exceptions) by index."""
    out = [None] * n
    gate = threading.Barrier(n)

    def body(i):
        gate.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            out[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


@pytest.mark.fast_cases("1-False", "2-True")
@pytest.mark.parametrize("n, relay", [(1, False), (2, False), (2, True), (3, False), (3, True)])
def test_eight_concurrent_clients_equal_their_solo_runs(parity, n, relay):
    check_concurrent_equals_solo(parity, manifest(n, relay), n)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """Tiny llama and qwen2 models (the parity model's shapes: vocab 512, 4 layers, C 64)
    in bf16 and int8, as ``cmlp model init`` / ``cmlp model quantize`` write them."""
    from cmlp.model.llama.synthetic import init_model as init_llama
    from cmlp.model.quantize import quantize_model

    base = tmp_path_factory.mktemp("families")
    out = {}
    for family in ("llama", "qwen2"):
        fp32 = init_llama(base / family, family, "tiny", seed=7)
        out[family, "bf16"] = quantize_model(fp32, base / f"{family}-bf16", "bf16")
        out[family, "int8"] = quantize_model(fp32, base / f"{family}-int8", "int8")
    return out


@pytest.mark.parametrize("n, relay", [(1, False), (2, True), (3, True)])
@pytest.mark.parametrize("family, dtype, wire", [("llama", "bf16", "BF16"), ("qwen2", "int8", "F32")])
def test_every_family_and_weight_dtype_batches_exactly(family_models, family, dtype, wire, n, relay):
    """Llama-family shards in bf16 (hidden states on a BF16 wire) and int8 batch like GPT-2:
    eight concurrent requests equal their solo runs."""
    doc = hb_manifest_dict(n, relay=relay, splits=SPLITS[n], max_seq_len=512, hidden_dim=64)
    doc["activation_spec"]["dtype"] = wire
    executors = check_concurrent_equals_solo(
        family_models[family, dtype], Manifest.from_json(json.dumps(doc)), n
    )
    assert all(ex.dtypes == {DType[wire]} for ex in executors[1:]), [ex.dtypes for ex in executors]


def check_concurrent_equals_solo(model_dir, m, n):
    executors = [CountingExecutor(model_dir, delay=0.003) for _ in range(n)]
    with served_many(m, executors, prefill_chunk=16) as server:  # 40 and 21 ids: chunked
        client = Client(str(server.address), m, timeout=30)
        solo = [run(client, PROMPTS[i], PARAMS[i]) for i in range(8)]
        greedy = run(client, PROMPTS[1], SamplingParams(max_tokens=20))[0]
        assert all(ex.max_rows == 1 for ex in executors)  # solo really was alone
        together = run_concurrently(lambda i: run(client, PROMPTS[i], PARAMS[i]), 8)
    for i in range(8):
        assert together[i] == solo[i], f"request {i}: {together[i]} != solo {solo[i]}"
    assert all(ex.max_rows >= 2 for ex in executors), [ex.max_rows for ex in executors]
    assert solo[1][0] != greedy  # the sampled requests really sampled
    return executors


@pytest.mark.parametrize("n", [2, 3])
def test_decode_groups_stay_whole_around_the_ring(parity, n):
    """With one group on the ring, every stage runs the eight streams as one forward: a group is
    one StepGroup message on every link, and stage 0 holds back rows that become ready while
    the group is out (late joiners, early returns) so that they join it instead of splitting it."""
    m = manifest(n, relay=True)
    # a forward of a few ms keeps the clients' handshakes (the ramp-up, slow on a loaded
    # machine) within a few steps, so most of the 40 steps have all eight streams
    executors = [CountingExecutor(parity, delay=0.005) for _ in range(n)]
    with served_many(m, executors, micro_batches=1) as server:
        client = Client(str(server.address), m, timeout=30)
        run_concurrently(lambda i: run(client, PROMPTS[i], SamplingParams(max_tokens=40)), 8)
    for stage, ex in enumerate(executors):
        decode = [rows for rows, t in ex.calls if t == 1]
        assert decode.count(8) >= 10, f"stage {stage}: {decode}"
        # between the first forward with all eight streams and the first stream's end, a
        # group split in two would show as forwards of fewer rows
        first, last = decode.index(8), len(decode) - 1 - decode[::-1].index(8)
        assert decode[first : last + 1] == [8] * (last + 1 - first), f"stage {stage}: {decode}"


@pytest.mark.fast_cases("1")
@pytest.mark.parametrize("n", [1, 2])
def test_a_disconnecting_client_frees_its_slot_and_does_not_disturb_the_others(parity, n):
    m = manifest(n)
    executors = [CountingExecutor(parity, delay=0.01) for _ in range(n)]
    with served_many(m, executors, slots=4) as server:
        client = Client(str(server.address), m, timeout=30)
        long = SamplingParams(max_tokens=60)
        solo = [run(client, PROMPTS[i], long) for i in range(3)]
        assert eventually(lambda: all(ex.free_slots == 4 for ex in executors))
        freed = {}

        ends = {}

        def body(i):
            if i < 3:
                result = run(client, PROMPTS[i], long)
                ends[i] = time.monotonic()
                return result
            gen = client.generate(PROMPTS[3], long)
            got = [next(gen) for _ in range(3)]
            gen.close()  # cancel: the enclave frees the slot
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # at once, while the others still run
                if all(ex.free_slots >= 1 for ex in executors):
                    freed["at"] = time.monotonic()
                    break
                time.sleep(0.005)
            return got

        results = run_concurrently(body, 4)
        assert eventually(lambda: all(ex.free_slots == 4 for ex in executors))
    for i in range(3):
        assert results[i] == solo[i]
    assert len(results[3]) == 3 and "at" in freed and freed["at"] < min(ends.values())


def test_a_full_server_answers_busy_and_serves_the_queued(parity):
    m = manifest(1)
    ex = CountingExecutor(parity, delay=0.02)
    with served_many(m, [ex], slots=2, concurrency=2, queue_size=1) as server:
        client = Client(str(server.address), m, timeout=30)
        holders = [client.generate(PROMPTS[i], SamplingParams(max_tokens=80)) for i in range(2)]
        for h in holders:
            assert isinstance(next(h), TokenEvent)  # both slots taken
        waited = {}
        t = threading.Thread(
            target=lambda: waited.update(r=run(client, PROMPTS[5], SamplingParams(max_tokens=4)))
        )
        t.start()
        time.sleep(0.3)  # the third waits at the host
        with pytest.raises(ServerBusy):
            list(client.generate(PROMPTS[6], SamplingParams(max_tokens=4)))
        for h in holders:
            assert isinstance(list(h)[-1], Finished)
        t.join(30)
        assert waited["r"][1] == "length" and len(waited["r"][0]) == 4


def test_stage0_answers_busy_when_its_slots_and_queue_are_full(parity):
    m = manifest(1)
    ex = CountingExecutor(parity, delay=0.02)
    # the host forwards 4 at once, stage 0 holds 2 slots and no queue: the 3rd gets "busy"
    with served_many(m, [ex], slots=2, concurrency=4, queue_size=0, admission_queue=0) as server:
        client = Client(str(server.address), m, timeout=30)
        holders = [client.generate(PROMPTS[i], SamplingParams(max_tokens=60)) for i in range(2)]
        for h in holders:
            next(h)
        with pytest.raises(ServerBusy):
            list(client.generate(PROMPTS[6], SamplingParams(max_tokens=4)))
        for h in holders:
            assert isinstance(list(h)[-1], Finished)
        assert run(client, PROMPTS[6], SamplingParams(max_tokens=4))[1] == "length"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")


def test_a_killed_stage_fails_every_active_sequence_and_the_server_recovers(tiny, tmp_path):
    doc = hb_manifest_dict(2, total_layers=4, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc)
    from cmlp.manifest import Manifest

    m = Manifest.load(path)
    procs = [start_stage_process(path, i, tiny, ["--persistent"]) for i in range(2)]
    server = HostBlindServer(
        m, host_config(), parse_endpoint("127.0.0.1:0"), health_interval=0.5, concurrency=4
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the stages load their weights
            try:
                server.start()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        client = Client(str(server.address), m, timeout=10)
        want = run(client, "The capital of France is", SamplingParams(max_tokens=8))[0]
        started = threading.Barrier(5)

        def body(i):
            gen = client.generate(PROMPTS[i], SamplingParams(max_tokens=1000))
            next(gen)
            started.wait(30)
            for _ in gen:
                pass

        threads_out = [None] * 4

        def wrap(i):
            try:
                body(i)
            except Exception as exc:  # noqa: BLE001 - checked below
                threads_out[i] = exc

        threads = [threading.Thread(target=wrap, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        started.wait(30)
        procs[1].kill()
        for t in threads:
            t.join(30)
        assert all(isinstance(e, PipelineUnavailable) for e in threads_out), threads_out
        assert all("stage 1" in str(e) for e in threads_out), threads_out
        procs[1].wait(10)
        procs[1] = start_stage_process(path, 1, tiny, ["--persistent"])
        deadline = time.monotonic() + 60
        while True:
            try:
                got = run(
                    Client(str(server.address), m, timeout=5),
                    "The capital of France is",
                    SamplingParams(max_tokens=8),
                )[0]
                break
            except GenerationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert got == want
    finally:
        server.close()
        stop_processes(procs)


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_sustained_1000_requests_from_16_clients_no_error_no_leak(parity):
    m = manifest(2)
    with served_many(
        m, [Gpt2Executor(parity, threads=1) for _ in range(2)], slots=8, concurrency=8, queue_size=16
    ) as server:
        client = Client(str(server.address), m, timeout=60)
        rng = random.Random(7)
        plan = [
            (
                rng.choice(PROMPTS),
                SamplingParams(
                    max_tokens=rng.randint(1, 24),
                    temperature=rng.choice([0.0, 0.8]),
                    seed=rng.randint(0, 1000),
                ),
            )
            for _ in range(1000)
        ]
        lock = threading.Lock()
        cursor = {"i": 0, "rss_warm": None, "done": 0}
        errors = []

        def worker(_):
            while True:
                with lock:
                    i = cursor["i"]
                    cursor["i"] += 1
                if i >= len(plan):
                    return
                try:
                    ids, reason = run(client, *plan[i])
                    assert reason == "length" and len(ids) == plan[i][1].max_tokens
                except Exception as exc:  # noqa: BLE001 - collected
                    errors.append((i, exc))
                with lock:
                    cursor["done"] += 1
                    if cursor["done"] == 200:
                        cursor["rss_warm"] = _rss_bytes()

        run_concurrently(worker, 16)
        rss_end = _rss_bytes()
    assert not errors, errors[:3]
    assert rss_end < cursor["rss_warm"] * 1.05, (cursor["rss_warm"], rss_end)


@pytest.mark.parametrize("n, relay", [(1, False), (3, True)])
def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(parity, n, relay):
    """Every stage (stage 0 and, through Chunk messages, the others) prefills a long prompt
    one chunk at a time, with decode steps of the running streams in between."""
    m = manifest(n, relay)
    executors = [CountingExecutor(parity, delay=0.005) for _ in range(n)]
    long_prompt = [int(t) for t in random.Random(99).choices(range(512), k=100)]
    with served_many(m, executors, prefill_chunk=32) as server:
        client = Client(str(server.address), m, timeout=30)
        solo = run(client, long_prompt, SamplingParams(max_tokens=5))
        runners = [client.generate(PROMPTS[i], SamplingParams(max_tokens=60)) for i in range(3)]
        for r in runners:
            next(r)  # three streams are decoding
        for ex in executors:
            ex.lens.clear()
        together = run(client, long_prompt, SamplingParams(max_tokens=5))
        lens = [list(ex.lens) for ex in executors]
        for r in runners:
            assert isinstance(list(r)[-1], Finished)
    assert together == solo
    for stage, c in enumerate(lens):
        # the prompt's rows, forward by forward (the last chunk, 4 tokens, may share a
        # forward with decode rows at a ring stage: it is short enough to mix)
        chunks = [i for i, f in enumerate(c) if any(t > 1 for t in f)]
        assert [t for i in chunks for t in c[i] if t > 1] == [32, 32, 32, 4], f"stage {stage}: {c}"
        assert all(c[i] == (32,) for i in chunks[:3]), f"stage {stage}: {c}"  # long chunks alone
        if n == 1:  # the running streams took a decode step between every two chunks
            pairs = itertools.pairwise(chunks)
            assert all(any(1 in c[j] for j in range(a + 1, b)) for a, b in pairs), c
        else:  # their rows are on the ring part of the time: decode steps while prefilling
            assert any(1 in f for f in c[chunks[0] : chunks[-1] + 1]), f"stage {stage}: {c}"


@pytest.mark.fast_cases("1-False")
@pytest.mark.parametrize("n, relay", [(1, False), (3, True)])
def test_short_prompts_join_the_decode_forward(parity, n, relay):
    """A prompt of at most ``mix_rows`` tokens is prefilled in the same forward as the
    running streams' decode rows at every stage (the weights are read once for both), and
    its tokens equal its solo run; a longer one still runs alone."""
    m = manifest(n, relay)
    # with N stages a short prompt joins a decode group only if one is back at stage 0 when
    # it is admitted (else it runs alone there, docs/batching.md): a slow stage 0 and fast
    # later stages keep a group waiting at stage 0 whenever a request comes in
    delays = [0.005] if n == 1 else [0.03] + [0.0] * (n - 1)
    executors = [CountingExecutor(parity, delay=d) for d in delays]
    short = PROMPTS[2]  # 12 tokens
    long_prompt = PROMPTS[6]  # 21 tokens
    with served_many(m, executors) as server:
        client = Client(str(server.address), m, timeout=30)
        solo = [run(client, p, SamplingParams(max_tokens=6)) for p in (short, long_prompt)]
        assert all(len(short) <= ex.mix_rows < len(long_prompt) for ex in executors)
        runners = [client.generate(PROMPTS[i], SamplingParams(max_tokens=60)) for i in (0, 1, 3)]
        for r in runners:
            next(r)  # three streams are decoding
        for ex in executors:
            ex.lens.clear()
        together = [run(client, p, SamplingParams(max_tokens=6)) for p in (short, long_prompt)]
        lens = [list(ex.lens) for ex in executors]
        for r in runners:
            assert isinstance(list(r)[-1], Finished)
    assert together == solo
    for stage, forwards in enumerate(lens):
        assert any(len(short) in f and 1 in f for f in forwards), f"stage {stage}: {forwards}"
        assert (len(long_prompt),) in forwards, f"stage {stage}: {forwards}"  # alone
        assert not any(len(long_prompt) in f and len(f) > 1 for f in forwards), forwards


def test_short_prompts_over_the_budget_wait_for_the_next_decode_forward(parity):
    """While a stream decodes, each step takes at most ``prefill_chunk`` prompt tokens into
    its forward; a short prompt left over waits for a later step's forward (it never runs in
    an extra forward of its own), and one longer than the budget is chunked.  All outputs
    equal their solo runs."""
    m = manifest(1)
    ex = CountingExecutor(parity, delay=0.05)  # slow steps: the four requests meet in one
    prompts = [PROMPTS[i] for i in (0, 2, 3, 5)]  # 5, 12, 3 and 7 tokens
    with served_many(m, [ex], prefill_chunk=10) as server:
        client = Client(str(server.address), m, timeout=30)
        solo = [run(client, p, SamplingParams(max_tokens=4)) for p in prompts]
        runner = client.generate(PROMPTS[7], SamplingParams(max_tokens=40))
        next(runner)  # one stream is decoding
        ex.lens.clear()
        together = run_concurrently(lambda i: run(client, prompts[i], SamplingParams(max_tokens=4)), 4)
        forwards = list(ex.lens)
        assert isinstance(list(runner)[-1], Finished)
    assert together == solo
    prompt_forwards = [f for f in forwards if any(n > 1 for n in f)]
    assert prompt_forwards, forwards
    # the 12-token prompt is over the budget: chunked (10 + 2), each chunk alone
    assert (10,) in forwards and (2,) in forwards, forwards
    for f in prompt_forwards:
        if f not in ((10,), (2,)):
            assert 1 in f, f"a short prompt ran without the decode rows: {forwards}"
            assert sum(n for n in f if n > 1) <= 10, forwards
    assert sum(f.count(5) + f.count(3) + f.count(7) for f in forwards) == 3, forwards


def test_cmlp_bench_serve_prints_the_table(parity, tmp_path, capsys):
    import json

    from cmlp.cli.main import build_parser

    doc = hb_manifest_dict(1, splits=SPLITS[1], max_seq_len=512, hidden_dim=64)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    from cmlp.manifest import Manifest

    m = Manifest.load(path)
    with served_many(m, [CountingExecutor(parity)]) as server:
        args = build_parser().parse_args(
            [
                "bench",
                "serve",
                "--connect",
                str(server.address),
                "--manifest",
                str(path),
                "--clients",
                "4",
                "--prompt-tokens",
                "5",
                "--max-tokens",
                "6",
                "--rounds",
                "2",
                "--vocab",
                "512",
            ]
        )
        assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["clients", "tok/s"]
    row = out[2].split()
    assert row[0] == "4" and float(row[1]) > 0 and row[-1] == "0"  # no errors
