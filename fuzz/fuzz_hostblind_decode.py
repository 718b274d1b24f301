"""Arbitrary bytes -> the host-blind protocol (cmlp.hostblind.protocol, docs/host-blind.md).

Every message a peer sends goes through ``decode`` and then an endpoint's state table.  For any
input: ``decode`` either returns a message or raises ProtocolError (never another exception),
a decoded message re-encodes to one that decodes equal, and each receiving endpoint (client,
stage 0, a stage link, the feedback link, each primed with a few live sequences) either takes
the message or raises ProtocolError with its state unchanged: a group message is taken whole or
refused whole.
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.errors import ProtocolError
    from cmlp.hostblind import protocol as P

MAX_INPUT = 1 << 16


def primed() -> list:
    """Receiving endpoints of every role with sequences 1..3 in flight (steps 0, 1, 2)."""
    client = P.Endpoint(P.CLIENT)
    client.send(P.Generate(1, {"prompt": "x"}))
    client.receive(P.encode(P.Started(1, (1, 2))))
    stage0 = P.Endpoint(P.STAGE0)
    stage0.receive(P.encode(P.Generate(1, {"prompt": "x"})))
    down = P.Endpoint(P.DOWNSTREAM)
    feedback = P.Endpoint(P.DOWNSTREAM, sampled_link=True)
    for seq in (1, 2, 3):
        down.receive(P.encode(P.Begin(seq, 0.0, 1.0, 0, None)))
        for step in range(seq - 1):
            down.receive(P.encode(P.Step(seq, step, 5 + step, 1)))
            feedback.receive(P.encode(P.Sampled(seq, step, 7)))
    feedback.forget(3)  # an ended sequence: its late rows are skipped
    return [client, stage0, down, feedback]


def snapshot(ep: P.Endpoint):
    return {k: (v.state, v.step) for k, v in ep.seqs.items()}, frozenset(ep.finished)


def test_one_input(data: bytes) -> None:
    try:
        msg = P.decode(data)
    except ProtocolError:
        msg = None
    if msg is not None:
        raw = P.encode(msg)
        again = P.decode(raw)
        assert again == msg and P.encode(again) == raw, f"round trip changed the message: {msg!r}"
    for ep in primed():
        before = snapshot(ep)
        try:
            ep.receive(data)
        except ProtocolError:
            assert snapshot(ep) == before, f"{ep.role}: a refused message changed the state"


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=4096)
