"""Attack 1 of issue 10: a dropped cache-clear sentinel must not bleed user A into user B.

The host drops the 40-byte sentinel frame that starts user B's prompt, on the
orchestrator -> stage 0 link or on the relayed stage 0 -> stage 1 link.  Before
the fix, a persistent stage kept user A's KV cache and computed B's output on
A's context, and the orchestrator exited 0.  Now the request must fail with a
typed error, or give exactly B's clean output; never anything else.

The second layer (each stage checks its cache position against the request's
seq_len, and a new session starts from an empty cache) is tested on its own by
sending B without a sentinel through an honest channel.
"""

import numpy as np
import pytest

from cmlp import errors
from cmlp.pipeline.gpt2 import Gpt2Executor, cache_clear_sentinel, generate
from cmlp.transport.wire import DType, Tensor
from tests.helpers import mitm
from tests.helpers.model import PARITY
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator
from tests.pipeline.test_hostile_network import with_endpoint
from tests.pipeline.test_pipeline_gpt2 import engine_greedy

PROMPT_A = [7, 99, 12, 400, 33, 5, 81, 250, 17, 3, 64, 128]  # user A's secret context
PROMPT_B = [11, 200, 42]
STEPS = 6
SENTINEL_FRAME = 13 + len(cache_clear_sentinel().encode()) + 16


def is_sentinel_frame(index, frame):
    return frame[3] == 6 and len(frame) == SENTINEL_FRAME


def drop_nth_sentinel(n):
    seen = {"count": 0}

    def pred(index, frame):
        if is_sentinel_frame(index, frame):
            seen["count"] += 1
            return seen["count"] == n
        return False

    return mitm.drop_if(pred)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def clean_b(model_dir):
    ids = engine_greedy(model_dir, PROMPT_B, STEPS)
    # the attack is observable: with A's context left in the cache, B's ids differ
    shard_ids = engine_greedy(model_dir, PROMPT_A + PROMPT_B, STEPS)
    assert shard_ids != ids
    return ids


def test_sentinel_frame_size_is_distinct():
    one_token = Tensor("input_ids", DType.U32, (1, 1), np.zeros((1, 1), np.uint32))
    assert SENTINEL_FRAME - 13 == 40  # the sealed payload: "40 bytes" in the issue
    assert 13 + len(one_token.encode()) + 16 != SENTINEL_FRAME


class Pipeline:
    def __init__(self, model_dir, where):
        relay = where == "relayed"
        self.real = make_manifest(2, splits=[(0, 2), (2, 4)], relay=relay, max_seq_len=64, hidden_dim=64)
        s = self.real.stages
        target = s[0].endpoint.data_in.endpoint if where == "orch-stage0" else s[1].endpoint.data_in.endpoint
        self.proxy = mitm.MitmProxy((target.host, target.port))
        self.view = with_endpoint(
            self.real, 0 if where == "orch-stage0" else 1, "data_in", self.proxy.endpoint
        )
        if where == "direct":
            raise ValueError("use orch-stage0 or relayed")
        self.stages = [
            StageThread(self.real, i, Gpt2Executor(model_dir, threads=1), persistent=True) for i in range(2)
        ]

    def orch(self):
        return orchestrator(self.view, infer_timeout=10).start()

    def close(self):
        self.proxy.close()
        for st in self.stages:
            st.stop()


@pytest.mark.fast_cases("relayed")
@pytest.mark.parametrize("where", ["orch-stage0", "relayed"])
def test_dropped_sentinel_same_session(model_dir, clean_b, where):
    """Prompts A then B in one session (``--prompts-file``); B's sentinel is dropped."""
    p = Pipeline(model_dir, where)
    try:
        p.proxy.upstream = drop_nth_sentinel(2)
        orch = p.orch()
        try:
            generate(orch, PROMPT_A, STEPS)
            try:
                got = generate(orch, PROMPT_B, STEPS).generated_ids
            except errors.CmlpError as exc:
                got = exc
        finally:
            orch.close()
        assert isinstance(got, errors.CmlpError) or got == clean_b, got
        assert isinstance(got, errors.CmlpError)  # the record layer sees the gap
    finally:
        p.close()


@pytest.mark.fast_cases("orch-stage0")
@pytest.mark.parametrize("where", ["orch-stage0", "relayed"])
def test_dropped_sentinel_next_session(model_dir, clean_b, where):
    """User A's session, then user B's new session whose first frame (the sentinel) is dropped."""
    p = Pipeline(model_dir, where)
    try:
        orch = p.orch()
        generate(orch, PROMPT_A, STEPS)
        orch.shutdown()
        p.proxy.upstream = drop_nth_sentinel(1)
        try:
            orch = p.orch()
            got = generate(orch, PROMPT_B, STEPS).generated_ids
        except errors.CmlpError as exc:
            got = exc
        finally:
            orch.close()
        assert isinstance(got, errors.CmlpError) or got == clean_b, got
        # a clean session afterwards on the same persistent stages gives B's clean ids
        p.proxy.upstream = mitm.passthrough
        for _ in range(50):
            try:
                orch = p.orch()
                break
            except errors.CmlpError:
                import time

                time.sleep(0.2)
        try:
            assert generate(orch, PROMPT_B, STEPS).generated_ids == clean_b
            orch.shutdown()
        finally:
            orch.close()
    finally:
        p.close()


def _ids(ids):
    arr = np.asarray([ids], np.uint32)
    return Tensor("input_ids", DType.U32, arr.shape, arr)


def test_stage_checks_cache_position_against_seq_len(model_dir, clean_b):
    """Defence in depth, without the record layer's help: B arrives with no sentinel."""
    m = make_manifest(2, splits=[(0, 2), (2, 4)], max_seq_len=64, hidden_dim=64)
    stages = [StageThread(m, i, Gpt2Executor(model_dir, threads=1), persistent=True) for i in range(2)]
    try:
        orch = orchestrator(m).start()
        generate(orch, PROMPT_A, STEPS)
        with pytest.raises(errors.RequestFailed, match="KV cache position mismatch"):
            orch.infer([[_ids(PROMPT_B)]], seq_len=len(PROMPT_B))
        # a lying seq_len cannot cover for it either: the cache was wiped on the mismatch
        with pytest.raises(errors.RequestFailed, match="KV cache position mismatch"):
            orch.infer([[_ids(PROMPT_B)]], seq_len=len(PROMPT_A) + STEPS - 1 + len(PROMPT_B))
        assert generate(orch, PROMPT_B, STEPS).generated_ids == clean_b
        orch.shutdown()
        # a new session starts from an empty cache even when A's session left one behind
        orch = orchestrator(m).start()
        generate(orch, PROMPT_A, STEPS)
        orch.close()  # no Shutdown: the session just breaks
        orch = orchestrator(m).start()
        first = orch.infer([[_ids(PROMPT_B)]], seq_len=len(PROMPT_B))
        from cmlp.pipeline.gpt2 import greedy_token

        assert greedy_token(first.outputs[0][0].data[0]) == clean_b[0]
        orch.shutdown()
    finally:
        for st in stages:
            st.stop()
