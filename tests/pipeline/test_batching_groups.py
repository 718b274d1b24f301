"""A stage i > 0 taking StepGroup messages (docs/batching.md), without sockets: the batch ring
loop reads from a scripted data_in and writes to a recording data_out.

A group is one message and one tensor [1, sum T, C]; the stage must cut it into exactly the rows
it lists, run them as one forward whose rows equal their solo runs, and send one StepGroup (one
SampledGroup from the last stage) on.  What an upstream gets wrong fails only what it touches:
a row at the wrong cache position or a long prompt mixed into a group fails that sequence, a
tensor that does not match the row list fails the group's sequences, and nothing is run on a
shifted row.
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

from cmlp.errors import ProtocolError
from cmlp.hostblind import protocol as P
from cmlp.hostblind.batch_loop import BatchRingLoop
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.pipeline.gpt2 import Gpt2Executor
from cmlp.transport import Data
from cmlp.transport.channel import TensorMessage
from cmlp.transport.wire import DType, Tensor
from tests.helpers.model import PARITY
from tests.helpers.pipeline import make_manifest

C = PARITY.config.n_embd
SPLITS = [(0, 1), (1, 2), (2, 4)]


class ScriptedIn:
    """data_in: hands out the queued messages in order."""

    def __init__(self):
        self.q: deque = deque()

    def pending(self) -> bool:
        return bool(self.q)

    def recv(self, timeout=None):
        return self.q.popleft()


class RecordingOut:
    """data_out: every message decoded by a downstream endpoint, every tensor kept."""

    def __init__(self, sampled_link: bool):
        self.peer = P.Endpoint(P.DOWNSTREAM, sampled_link=sampled_link)
        self.events: list = []
        self.tensors: list = []

    def send(self, payload, more=False):
        self.events.append(self.peer.receive(payload))

    def send_tensor(self, t, more=False):
        self.tensors.append(np.array(t.data))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


def executor(model_dir, idx: int) -> Gpt2Executor:
    m = make_manifest(3, splits=SPLITS, max_seq_len=128, hidden_dim=C)
    ex = Gpt2Executor(model_dir, threads=1)
    ex.init(m.stages[idx], m.activation_spec, 3)
    ex.configure_slots(8)
    return ex


class Stage:
    """Stage ``idx`` of 3 as a batch ring loop, with the upstream endpoint that feeds it."""

    def __init__(self, model_dir, idx: int):
        m = make_manifest(3, splits=SPLITS, max_seq_len=128, hidden_dim=C)
        self.ex = executor(model_dir, idx)
        worker = SimpleNamespace(idx=idx, manifest=m, executor=self.ex)
        self.data_in, self.data_out = ScriptedIn(), RecordingOut(sampled_link=idx == 2)
        self.loop = BatchRingLoop(
            worker, None, self.data_in, self.data_out, m.activation_spec, HostBlindOptions()
        )
        self.loop.start()
        self.up = P.Endpoint(P.UPSTREAM)

    def begin(self, *seqs):
        for s in seqs:
            self.handle(self.up.send(P.Begin(s, 0.0, 1.0, 0, None)))

    def handle(self, payload, tensor=None) -> list:
        """One message (and its tensor) through the loop; returns the forward's batch rows."""
        if tensor is not None:
            self.data_in.q.append(TensorMessage(Tensor("hidden_states", DType.F32, tensor.shape, tensor)))
        batch: list = []
        self.loop._handle(Data(payload), batch)
        self.loop._flush(batch)
        return batch

    def group(self, rows, tensor):
        """rows: (seq, step, seq_len, tokens); sent unchecked by the upstream endpoint when it
        would refuse them (the stage must check for itself)."""
        ev = P.StepGroup(tuple(P.StepRow(*r) for r in rows))
        try:
            payload = self.up.send(ev)
        except Exception:
            payload = P.encode(ev)
        return self.handle(payload, tensor)


def hidden(t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, t, C)).astype(np.float32)


def test_a_group_runs_as_one_forward_and_goes_on_as_one_group(model_dir):
    st = Stage(model_dir, 1)
    st.begin(1, 2, 3)
    rows = [(1, 0, 4, 4), (2, 0, 3, 3), (3, 0, 5, 5)]
    parts = [hidden(r[3], k) for k, r in enumerate(rows)]
    st.group(rows, np.concatenate(parts, axis=1))
    out = st.data_out
    assert [type(e) for e in out.events] == [P.Begin] * 3 + [P.StepGroup]
    assert out.events[-1].rows == tuple(P.StepRow(*r) for r in rows)
    (sent,) = out.tensors
    assert sent.shape == (1, 12, C)
    # each row equals that row run alone on a fresh stage
    solo = executor(model_dir, 1)
    off = 0
    for (seq, _, seq_len, t), part in zip(rows, parts, strict=True):
        solo.open_seq(seq)
        row = Tensor("hidden_states", DType.F32, part.shape, part)
        solo.check_row(seq, 0, seq_len, row)
        (alone,) = solo.forward_rows([seq], [row])
        np.testing.assert_array_equal(sent[:, off : off + t], alone)
        off += t
    # the decode step of the same group: one row each
    st.group([(1, 1, 5, 1), (2, 1, 4, 1), (3, 1, 6, 1)], hidden(3, 9))
    assert isinstance(out.events[-1], P.StepGroup) and out.tensors[-1].shape == (1, 3, C)


def test_a_row_at_the_wrong_position_fails_its_sequence_only(model_dir):
    st = Stage(model_dir, 1)
    st.begin(1, 2, 3)
    # sequence 2 claims 9 positions after 3 new ones: a dropped chunk (nothing cached)
    st.group([(1, 0, 4, 4), (2, 0, 9, 3), (3, 0, 5, 5)], hidden(12, 0))
    events = st.data_out.events[3:]
    assert [type(e) for e in events] == [P.Fail, P.StepGroup]
    assert events[0].seq == 2 and "position mismatch" in events[0].message
    assert [r.seq for r in events[1].rows] == [1, 3]
    assert st.data_out.tensors[-1].shape == (1, 9, C)
    assert not st.ex.has_seq(2) and st.ex.has_seq(1)
    # the failed sequence's later rows are dropped, the others go on
    st.group([(1, 1, 5, 1), (2, 1, 10, 1), (3, 1, 6, 1)], hidden(3, 1))
    assert [r.seq for r in st.data_out.events[-1].rows] == [1, 3]


@pytest.mark.parametrize("positions", [11, 13, 1])
def test_a_tensor_that_does_not_match_the_rows_fails_the_group(model_dir, positions):
    st = Stage(model_dir, 1)
    st.begin(1, 2, 3)
    calls = []
    st.ex.forward_rows = lambda *a: calls.append(a)  # type: ignore[method-assign]
    st.group([(1, 0, 4, 4), (2, 0, 3, 3), (3, 0, 5, 5)], hidden(positions, 0))
    events = st.data_out.events[3:]
    assert [type(e) for e in events] == [P.Fail] * 3
    assert {e.seq for e in events} == {1, 2, 3} and not calls
    assert not any(st.ex.has_seq(s) for s in (1, 2, 3))


def test_a_long_prompt_inside_a_group_fails_that_sequence_only(model_dir):
    st = Stage(model_dir, 1)
    st.begin(1, 2)
    long = st.ex.mix_rows + 1
    st.group([(1, 0, long, long), (2, 0, 3, 3)], hidden(long + 3, 0))
    events = st.data_out.events[2:]
    assert [type(e) for e in events] == [P.Fail, P.StepGroup]
    assert events[0].seq == 1 and [r.seq for r in events[1].rows] == [2]
    # alone it is a prefill like any other
    st.begin(3)
    st.group([(3, 0, long, long)], hidden(long, 1))
    assert st.data_out.events[-1].rows == (P.StepRow(3, 0, long, long),)


def test_the_last_stage_answers_a_group_with_one_sampled_group(model_dir):
    st = Stage(model_dir, 2)
    st.begin(1, 2)
    st.group([(1, 0, 4, 4), (2, 0, 3, 3)], hidden(7, 0))
    (ev,) = st.data_out.events
    assert isinstance(ev, P.SampledGroup) and [(r.seq, r.step) for r in ev.rows] == [(1, 0), (2, 0)]
    solo = executor(model_dir, 2)
    for r, part in zip(ev.rows, (hidden(7, 0)[:, :4], hidden(7, 0)[:, 4:]), strict=True):
        solo.open_seq(r.seq)
        row = Tensor("hidden_states", DType.F32, part.shape, np.ascontiguousarray(part))
        solo.check_row(r.seq, 0, part.shape[1], row)
        logits = solo.forward_rows([r.seq], [row])
        assert r.token_id == int(np.flatnonzero(logits[0] == logits[0].max())[-1])  # greedy, last tie
    # a group naming a sequence that never began is refused whole: nothing runs, the link ends
    calls = []
    st.ex.forward_rows = lambda *a: calls.append(a)  # type: ignore[method-assign]
    with pytest.raises(ProtocolError):
        st.group([(1, 1, 5, 1), (9, 0, 1, 1)], hidden(2, 1))
    assert not calls and len(st.data_out.events) == 1
