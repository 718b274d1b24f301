"""A hostile host on the stage 0 -> stage 1 data link while a mixed group is in flight.

Three streams are decoding when a fourth client's short prompt joins their forward, so its Step 0
(12 positions) leaves stage 0 in one StepGroup with three decode rows: one [1, 15, C] tensor
frame.  Armed once the streams decode (their prompts have passed), a frame-aware man in the middle
drops, replays, reorders or bit-flips exactly that tensor frame (it is the only frame of more than
10 rows).  Every client must end with a typed error (PipelineUnavailable) or, for a stream that
finished first, its solo tokens; no client may ever see a token its solo run would not give (no
shifted prompt, no other sequence's row); and the stages must serve again afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest

from cmlp.client import Client, Finished, SamplingParams, TokenEvent
from cmlp.errors import GenerationError, PipelineUnavailable
from cmlp.hostblind.host import HostBlindServer
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.manifest import Manifest
from cmlp.pipeline.gpt2 import Gpt2Executor
from cmlp.transport.sockets import parse_endpoint
from tests.helpers import mitm
from tests.helpers.hostblind_helpers import hb_manifest_dict, host_config
from tests.helpers.model import PARITY
from tests.helpers.pipeline import StageThread

SPLITS = [(0, 2), (2, 4)]
C = PARITY.config.n_embd
STREAMS = [[11, 22, 33, 44, 55], [7, 8, 9, 10, 11, 12], [300, 301, 302, 303, 304, 305, 306]]
JOINER = [101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112]  # 12 <= mix_rows
# the joiner's group tensor holds 12 + 3 rows of C floats; once the streams decode, every other
# group is at most 3 rows
BIG = 10 * C * 4


def is_joiner_tensor(index: int, frame: bytes) -> bool:
    return len(frame) > BIG


class FirstMatch:
    """A tamper (installed when the link connects; the proxy keeps it for the connection)
    that, once armed, applies ``action`` to the first frame carrying the joiner's tensor."""

    def __init__(self, action: str):
        self.action = action
        self.armed = False
        self.state = {"done": False, "held": None}

    def __call__(self, index, frame):
        return self._tamper(index, frame) if self.armed else frame

    def _tamper(self, index, frame):
        action, state = self.action, self.state
        if state["held"] is not None:  # "reorder": the held frame goes after this one
            held, state["held"] = state["held"], None
            return frame + held
        if state["done"] or not is_joiner_tensor(index, frame):
            return frame
        state["done"] = True
        if action == "drop":
            return b""
        if action == "replay":
            return frame + frame
        if action == "reorder":
            state["held"] = frame
            return b""
        b = bytearray(frame)  # "flip": one bit of the ciphertext
        b[len(b) // 2] ^= 1
        return bytes(b)


class SlowExecutor(Gpt2Executor):
    """Slows every forward by ``delay`` and records the rows' lengths of every forward.  A slow
    stage 0 and a fast stage 1 keep a decode group ready at stage 0 whenever a request is
    admitted, so the joiner's prompt shares that group's forward."""

    def __init__(self, model_dir, delay):
        super().__init__(model_dir, threads=1)
        self.delay = delay
        self.lens: list = []

    def forward_rows(self, seqs, rows):
        self.lens.append(tuple(int(r.shape[1]) for r in rows))
        time.sleep(self.delay)
        return super().forward_rows(seqs, rows)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


@contextmanager
def served_through(m, model_dir, proxy):
    """Two stages whose data link stage 0 -> stage 1 goes through ``proxy``; 8 clients at once."""
    options = HostBlindOptions(token_timeout=2.0, input_timeout=2.0)
    executors = [SlowExecutor(model_dir, delay) for delay in (0.03, 0.0)]
    stages = [
        StageThread(
            m,
            i,
            executors[i],
            persistent=True,
            hostblind=options,
            data_out_target=parse_endpoint(proxy.endpoint) if i == 0 else None,
        )
        for i in range(len(SPLITS))
    ]
    server = HostBlindServer(
        m, host_config(), parse_endpoint("127.0.0.1:0"), queue_size=8, health_interval=0.5, concurrency=8
    )
    try:
        server.start()
        yield server, executors[0]
    finally:
        server.close()
        for s in stages:
            s.stop()


def collect(client, prompt, n, out, key):
    """Generate into out[key] = (tokens, exception or None, finished)."""
    ids, exc, finished = [], None, False
    try:
        for ev in client.generate(prompt, SamplingParams(max_tokens=n)):
            if isinstance(ev, TokenEvent):
                ids.append(ev.token_id)
                out[key] = (list(ids), None, False)
            elif isinstance(ev, Finished):
                finished = True
    except GenerationError as e:
        exc = e
    out[key] = (ids, exc, finished)


def serving_again(server, m, prompt, want, within=20.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            out: dict = {}
            collect(Client(str(server.address), m, timeout=5), prompt, len(want), out, 0)
            if out[0][1] is None:
                return out[0][0] == want
        except GenerationError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.mark.fast_cases("flip")
@pytest.mark.parametrize("attack", ["drop", "replay", "reorder", "flip"])
def test_a_hostile_host_inside_a_mixed_group_gets_typed_errors_never_wrong_tokens(parity, attack):
    m = Manifest.from_json(json.dumps(hb_manifest_dict(2, splits=SPLITS, max_seq_len=512, hidden_dim=C)))
    s1_in = m.stages[1].endpoint.data_in.endpoint
    tamper = FirstMatch(attack)
    proxy = mitm.MitmProxy((s1_in.host, s1_in.port), upstream=tamper)
    try:
        with served_through(m, parity, proxy) as (server, stage0):
            client = Client(str(server.address), m, timeout=3)
            solo: dict = {}
            for k, p in enumerate(STREAMS + [JOINER]):
                collect(client, p, 40 if k < len(STREAMS) else 10, solo, k)
            assert all(s[1] is None and s[2] for s in solo.values()), solo

            stage0.lens.clear()
            out: dict = {}
            threads = [
                threading.Thread(target=collect, args=(client, p, 40, out, k), daemon=True)
                for k, p in enumerate(STREAMS)
            ]
            for t in threads:
                t.start()
            assert mitm.wait_until(lambda: all(len(out.get(k, ([],))[0]) >= 2 for k in range(3)), 10)
            tamper.armed = True  # from now on: the joiner's group tensor
            joiner = threading.Thread(target=collect, args=(client, JOINER, 10, out, 3), daemon=True)
            joiner.start()
            for t in threads + [joiner]:
                t.join(30)
                assert not t.is_alive(), "a client hung"
            tamper.armed = False  # the restarted session's link passes
            mixed = [f for f in stage0.lens if len(JOINER) in f and 1 in f]
            assert serving_again(server, m, JOINER, solo[3][0])
    finally:
        proxy.close()
    assert tamper.state["done"], "the attack never fired"
    assert mixed, "the joiner's prompt did not share a forward with decode rows"
    failed = 0
    for k, (ids, exc, finished) in out.items():
        assert ids == solo[k][0][: len(ids)], f"client {k} saw a token its solo run does not give"
        if exc is not None:
            assert isinstance(exc, PipelineUnavailable), f"client {k}: {exc!r}"
            failed += 1
        else:
            assert finished and ids == solo[k][0]
    assert out[3][1] is not None, "the joiner's prompt was tampered with, yet it finished"
    assert failed >= 1
