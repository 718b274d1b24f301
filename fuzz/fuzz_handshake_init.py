"""The initiator after start(); arbitrary bytes as the responder's reply.

Msg 1 (from start()) is what the harness "sends"; the input is everything the
responder sends back: frames from a FrameDecoder with the handshake limit ->
on_responder_hello, which returns msg 3.  The end of the input is EOF.  Each
run must end in a CmlpError, at EOF, or in an established session whose
residual frames go through the record layer (_session.receive_records).
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    import _session

    from cmlp.errors import CmlpError
    from cmlp.transport.handshake import InitiatorHandshake

MAX_INPUT = 1 << 17


def test_one_input(data: bytes) -> None:
    hs = InitiatorHandshake(
        _session.PROVIDER,
        _session.VERIFIER,
        _session.CONFIG,
        secret_key=_session.SK_INITIATOR,
        nonce=_session.NONCE_INITIATOR,
    )
    _session.check_reply(hs.start(), 0)
    decoder = _session.handshake_decoder()
    decoder.feed(data)
    try:
        reply = decoder.next_frame()
        if reply is None:
            return  # Closed before msg 2
        _session.check_reply(hs.on_responder_hello(reply), 1)
    except CmlpError:
        assert hs.keys is None, "a failed handshake left session keys behind"
        return
    assert hs.keys is not None, "the handshake finished without keys"
    _session.receive_records(hs.keys, decoder)


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=8192)
