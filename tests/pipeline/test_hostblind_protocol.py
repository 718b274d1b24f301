"""The host-blind messages and their state tables, without sockets; stop/decoding logic."""

import struct

import pytest

from cmlp.errors import ProtocolError
from cmlp.hostblind import protocol as P
from cmlp.hostblind.params import SamplingParams
from cmlp.hostblind.stopping import Stopper
from cmlp.tokenizer import load_tokenizer

EVENTS = [
    P.Generate(1, {"prompt": "héllo", "params": SamplingParams().to_json()}),
    P.Cancel(1),
    P.Started(1, (1, 2, 50256)),
    P.Token(1, 0, 50256, "é\n"),
    P.Finished(1, "stop", 3, 4),
    P.Error(1, P.ERR_CONTEXT, "too long"),
    P.Begin(9, 0.7, 0.9, 40, 2**64 - 1),
    P.Begin(9, 0.0, 1.0, 0, None),
    P.Step(9, 3, 10, 2),
    P.StepGroup((P.StepRow(9, 3, 10, 1), P.StepRow(2**64 - 1, 0, 16, 16))),
    P.Chunk(9, 64, 1),
    P.End(9),
    P.Fail(9, "stage 1: boom"),
    P.Sampled(9, 3, 17),
    P.SampledGroup((P.Sampled(9, 3, 17), P.Sampled(4, 0, 2**32 - 1))),
]


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: type(e).__name__)
def test_every_message_round_trips(ev):
    assert P.decode(P.encode(ev)) == ev


def test_padding_hides_exact_lengths():
    a = P.encode(P.Token(1, 0, 5, "a"))
    b = P.encode(P.Token(1, 0, 5, "abcdefghijklmnopqrstuvwxyz"))
    assert len(a) == len(b) == P.SMALL_PAD
    g1 = P.encode(P.Generate(1, {"prompt": "x", "params": {}}))
    g2 = P.encode(P.Generate(1, {"prompt": "x" * 100, "params": {}}))
    assert len(g1) == len(g2) == P.GENERATE_PAD


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x12" + b"\0" * 7,  # shorter than the head
        bytes([0x7F]) + b"\0" * 8,  # unknown type
        struct.pack("<BQ", P.CANCEL, 1) + b"x",  # trailing byte
        struct.pack("<BQI", P.STARTED, 1, 2**31),  # count beyond the bytes
        struct.pack("<BQIIH", P.TOKEN, 1, 0, 5, 60000),  # text beyond the bytes
        struct.pack("<BQIIH", P.TOKEN, 1, 0, 5, 2) + b"\xff\xfe" + b"\0" * 46,  # not UTF-8
        struct.pack("<BQBII", P.FINISHED, 1, 9, 1, 1),  # unknown reason
        struct.pack("<BQBH", P.ERROR, 1, 99, 0),  # unknown code
        struct.pack("<BQIIB", P.STEP, 1, 0, 5, 0),  # a Step without tensors
        struct.pack("<BQIIB", P.STEP, 1, 0, 5, 200),  # too many tensors
        struct.pack("<BQIIBB", P.STEP, 1, 0, 5, 1, 0),  # trailing byte (the old row count)
        struct.pack("<BQ", P.STEP_GROUP, 0),  # no row count
        struct.pack("<BQH", P.STEP_GROUP, 0, 0),  # an empty group
        struct.pack("<BQH", P.STEP_GROUP, 0, P.MAX_IN_FLIGHT + 1)
        + struct.pack("<QIII", 1, 0, 1, 1) * (P.MAX_IN_FLIGHT + 1),  # more rows than can be in flight
        struct.pack("<BQH", P.STEP_GROUP, 0, 2) + struct.pack("<QIII", 1, 0, 1, 1),  # a row short
        struct.pack("<BQH", P.STEP_GROUP, 0, 1) + struct.pack("<QIII", 1, 0, 1, 1) + b"\0",  # trailing
        struct.pack("<BQH", P.STEP_GROUP, 5, 1) + struct.pack("<QIII", 1, 0, 1, 1),  # head seq not 0
        struct.pack("<BQH", P.STEP_GROUP, 0, 1) + struct.pack("<QIII", 1, 0, 1, 0),  # a row of no tokens
        struct.pack("<BQH", P.SAMPLED_GROUP, 0, 2) + struct.pack("<QII", 1, 0, 1),  # a row short
        struct.pack("<BQH", P.SAMPLED_GROUP, 0, 1) + struct.pack("<QIII", 1, 0, 1, 1),  # a Step row
        struct.pack("<BQIB", P.CHUNK, 1, 5, 0),  # a Chunk without tensors
        struct.pack("<BQIB", P.CHUNK, 1, 5, 9),  # too many tensors
        struct.pack("<BQIBB", P.CHUNK, 1, 5, 1, 0),  # trailing byte
        struct.pack("<BQ", P.GENERATE, 1) + b"[1]",  # body not an object
        struct.pack("<BQ", P.GENERATE, 1) + b"\xff",  # body not UTF-8
        struct.pack("<BQ", P.GENERATE, 1) + b"[" * 100000,  # deep nesting
        struct.pack("<BQ", P.STARTED, 1) + struct.pack("<I", 1) + b"\0" * 4 + b"\0" * 64,  # pad > unit
        struct.pack("<BQddIBQ", P.BEGIN, 1, 0.5, float("nan"), 0, 0, 0),  # top_p not a number
        struct.pack("<BQddIBQ", P.BEGIN, 1, float("inf"), 1.0, 0, 0, 0),  # infinite temperature
        struct.pack("<BQ", P.GENERATE, 1) + b'{"prompt":"x","params":{"top_p":NaN}}',  # not JSON
        struct.pack("<BQ", P.GENERATE, 1) + b'{"prompt":"\\ud800"}',  # a lone surrogate
        struct.pack("<BQ", P.GENERATE, 1) + b'{"prompt":"x","prompt":"y"}',  # a duplicate key
    ],
)
def test_malformed_messages_are_protocol_errors(raw):
    with pytest.raises(ProtocolError):
        P.decode(raw)


def test_client_and_stage0_tables_mirror_each_other():
    c, s = P.Endpoint(P.CLIENT), P.Endpoint(P.STAGE0)
    g = s.receive(c.send(P.Generate(4, {"prompt": "x", "params": {}})))
    assert c.state(4) == s.state(4) == P.WAIT_START
    with pytest.raises(ProtocolError):  # a token before Started
        s.send(P.Token(4, 0, 1, "a"))
    c.receive(s.send(P.Started(4, (1,))))
    for i in range(3):
        c.receive(s.send(P.Token(4, i, i, "a")))
    with pytest.raises(ProtocolError, match="step"):  # a dropped token shows
        c.receive(P.encode(P.Token(4, 4, 1, "a")))
    c.receive(s.send(P.Finished(4, "length", 1, 3)))
    assert c.state(4) == s.state(4) == P.DONE
    with pytest.raises(ProtocolError):  # no reuse of a finished sequence
        c.send(P.Generate(4, g.body))
    with pytest.raises(ProtocolError):  # nothing after the end
        c.receive(P.encode(P.Token(4, 3, 1, "a")))
    with pytest.raises(ProtocolError):  # a client cannot send tokens
        P.Endpoint(P.CLIENT).send(P.Token(5, 0, 1, "a"))


def test_stage_link_order_and_feedback_steps():
    up, down = P.Endpoint(P.UPSTREAM), P.Endpoint(P.DOWNSTREAM)
    with pytest.raises(ProtocolError):
        down.receive(P.encode(P.Step(1, 0, 5, 1)))  # Step before Begin
    down.receive(up.send(P.Begin(1, 1.0, 1.0, 0, 3)))
    down.receive(up.send(P.Step(1, 0, 5, 2)))
    with pytest.raises(ProtocolError):  # replayed step number
        down.receive(P.encode(P.Step(1, 0, 5, 1)))
    fb_out, fb_in = P.Endpoint(P.UPSTREAM, True), P.Endpoint(P.DOWNSTREAM, True)
    fb_in.receive(fb_out.send(P.Sampled(1, 0, 5)))
    with pytest.raises(ProtocolError):  # skipped (dropped) step
        fb_in.receive(P.encode(P.Sampled(1, 2, 5)))
    with pytest.raises(ProtocolError):  # no Steps on the feedback link
        fb_in.receive(P.encode(P.Step(2, 0, 5, 1)))
    fb_in.forget(1)
    assert fb_in.is_stale(P.encode(P.Sampled(1, 1, 5)))
    assert not fb_in.is_stale(P.encode(P.Sampled(2, 0, 5)))


def _rows(*seq_steps, tokens=1):
    return P.StepGroup(tuple(P.StepRow(q, st, 5 + st, tokens) for q, st in seq_steps))


def test_a_step_group_is_checked_row_by_row_and_taken_whole():
    up, down = P.Endpoint(P.UPSTREAM), P.Endpoint(P.DOWNSTREAM)
    for seq in (1, 2, 3):
        down.receive(up.send(P.Begin(seq, 1.0, 1.0, 0, None)))
    down.receive(up.send(_rows((1, 0), (2, 0))))
    # seq 3 is at step 0, seq 1 at step 1: a replayed row refuses the whole group ...
    for bad in (_rows((3, 0), (1, 0)), _rows((3, 0), (7, 0)), _rows((3, 0), (3, 0)), _rows((3, 1))):
        with pytest.raises(ProtocolError):
            down.receive(P.encode(bad))
        with pytest.raises(ProtocolError):
            up.send(bad)
    # ... and changes nothing: the same rows in order are taken afterwards
    ev = down.receive(up.send(_rows((3, 0), (1, 1), (2, 1))))
    assert [r.seq for r in ev.rows] == [3, 1, 2]
    assert down.seqs[1].step == down.seqs[2].step == 2 and down.seqs[3].step == 1
    down.receive(up.send(P.End(2)))
    with pytest.raises(ProtocolError):  # a row of an ended sequence
        down.receive(P.encode(_rows((1, 2), (2, 2))))
    fb_out, fb_in = P.Endpoint(P.UPSTREAM, True), P.Endpoint(P.DOWNSTREAM, True)
    with pytest.raises(ProtocolError):  # no StepGroup on the feedback link
        fb_in.receive(P.encode(_rows((1, 0))))
    with pytest.raises(ProtocolError):
        fb_out.send(_rows((1, 0)))
    with pytest.raises(ProtocolError):  # no SampledGroup on a forward link
        down.receive(P.encode(P.SampledGroup((P.Sampled(1, 2, 5),))))


def test_a_sampled_group_skips_rows_of_ended_sequences_only():
    fb_out, fb_in = P.Endpoint(P.UPSTREAM, True), P.Endpoint(P.DOWNSTREAM, True)
    group = P.SampledGroup((P.Sampled(1, 0, 5), P.Sampled(2, 0, 6)))
    assert fb_in.receive(fb_out.send(group)) == group
    fb_in.forget(2)  # stage 0 ended sequence 2 while its token was in flight
    late = P.SampledGroup((P.Sampled(1, 1, 7), P.Sampled(2, 1, 8)))
    assert not fb_in.is_stale(P.encode(late))
    assert fb_in.receive(fb_out.send(late)).rows == (P.Sampled(1, 1, 7),)
    fb_in.forget(1)
    assert fb_in.is_stale(P.encode(P.SampledGroup((P.Sampled(1, 2, 9), P.Sampled(2, 2, 9)))))
    with pytest.raises(ProtocolError):  # a skipped (dropped) step of a live sequence
        fb_in.receive(P.encode(P.SampledGroup((P.Sampled(3, 1, 9),))))
    with pytest.raises(ProtocolError):  # the same sequence twice
        fb_in.receive(P.encode(P.SampledGroup((P.Sampled(3, 0, 9), P.Sampled(3, 1, 9)))))
    assert fb_in.state(3) == P.IDLE


def test_prompt_chunks_only_before_the_first_step():
    up, down = P.Endpoint(P.UPSTREAM), P.Endpoint(P.DOWNSTREAM)
    with pytest.raises(ProtocolError):
        down.receive(P.encode(P.Chunk(1, 32, 1)))  # Chunk before Begin
    down.receive(up.send(P.Begin(1, 1.0, 1.0, 0, 3)))
    for end in (32, 64):
        down.receive(up.send(P.Chunk(1, end, 1)))
    down.receive(up.send(P.Step(1, 0, 70, 1)))  # the prompt's last chunk, sampled
    with pytest.raises(ProtocolError, match="after Step 0"):
        down.receive(P.encode(P.Chunk(1, 96, 1)))  # a host replaying a chunk later
    with pytest.raises(ProtocolError, match="after Step 0"):
        up.send(P.Chunk(1, 96, 1))
    fb_out, fb_in = P.Endpoint(P.UPSTREAM, True), P.Endpoint(P.DOWNSTREAM, True)
    with pytest.raises(ProtocolError):  # no Chunks on the feedback link
        fb_in.receive(P.encode(P.Chunk(2, 5, 1)))
    with pytest.raises(ProtocolError):
        fb_out.send(P.Chunk(2, 5, 1))


def test_in_flight_sequences_are_bounded():
    down = P.Endpoint(P.DOWNSTREAM)
    for seq in range(P.MAX_IN_FLIGHT):
        down.receive(P.encode(P.Begin(seq, 0.0, 1.0, 0, None)))
    with pytest.raises(ProtocolError, match="in flight"):
        down.receive(P.encode(P.Begin(10**6, 0.0, 1.0, 0, None)))
    fb_in = P.Endpoint(P.DOWNSTREAM, True)
    fb_in.receive(P.encode(P.SampledGroup(tuple(P.Sampled(s, 0, 1) for s in range(P.MAX_IN_FLIGHT - 1)))))
    with pytest.raises(ProtocolError, match="in flight"):  # two new rows, one place
        fb_in.receive(P.encode(P.SampledGroup((P.Sampled(100, 0, 1), P.Sampled(101, 0, 1)))))
    assert fb_in.state(100) == P.IDLE


# -- stop conditions on decoded text (the embedded GPT-2 tokenizer) -----------------
TOK = load_tokenizer()


def run(text_ids, **kw):
    params = SamplingParams(max_tokens=kw.pop("max_tokens", 100), **kw)
    st = Stopper(TOK.decode, params, (TOK.eos_id,))
    out, reason = [], None
    for i in text_ids:
        text, reason = st.push(i)
        out.append(text)
        if reason:
            break
    return out, reason, st.completion_tokens


def test_length_and_text_concatenation():
    ids = TOK.encode(" Hello world, this is a test")
    out, reason, n = run(ids, max_tokens=4)
    assert reason == "length" and n == 4 and "".join(out) == TOK.decode(ids[:4])


def test_eos_ends_with_empty_text():
    ids = TOK.encode(" Hi") + [TOK.eos_id] + TOK.encode(" more")
    out, reason, n = run(ids)
    assert reason == "eos" and out[-1] == "" and n == len(ids) - len(TOK.encode(" more"))


def test_stop_sequence_is_never_emitted_and_prefix_is_held_then_released():
    ids = TOK.encode(" alpha beta. gamma END delta")
    out, reason, _ = run(ids, stop=(" END",))
    assert reason == "stop" and "".join(out) == " alpha beta. gamma"
    # " E" could start " END": it is held back, then released when " Ex..." rules it out
    ids = TOK.encode(" one Ex two")
    out, reason, _ = run(ids, stop=(" END",), max_tokens=len(ids))
    assert reason == "length" and "".join(out) == " one Ex two"


def test_stop_spanning_tokens_and_multibyte_characters():
    ids = TOK.encode(" café 日本語 stop here")
    out, reason, _ = run(ids, stop=("語 st",))
    assert reason == "stop" and "".join(out) == " café 日本"
    assert all("\ufffd" not in t for t in out)
    # byte-level tokens of one character release "" until it is complete
    ids = TOK.encode("日")
    if len(ids) > 1:
        out, _, _ = run(ids, max_tokens=len(ids))
        assert out[:-1] == [""] * (len(ids) - 1) and out[-1] == "日"


def test_info_exchange_and_malformed_replies():
    c, s = P.Endpoint(P.CLIENT), P.Endpoint(P.STAGE0)
    assert isinstance(s.receive(c.send(P.Info(7))), P.Info)
    body = {"chat_template": "{{ x }}" * 1000, "bos_token": None, "eos_token": "<|endoftext|>"}
    assert c.receive(s.send(P.InfoReply(7, body))) == P.InfoReply(7, body)
    assert c.state(7) == P.DONE
    head = struct.pack("<BQ", P.INFO_REPLY, 8)
    for raw in (
        head + b'{"chat_template": 1, "bos_token": null, "eos_token": null}',
        head + b'{"chat_template": null}',
        head + b"[]",
        head + b"\xff",
    ):
        with pytest.raises(ProtocolError):
            P.decode(raw)
    with pytest.raises(ProtocolError):  # no tokens in an info exchange
        s2 = P.Endpoint(P.STAGE0)
        s2.receive(P.encode(P.Info(9)))
        s2.send(P.Token(9, 0, 1, "a"))
