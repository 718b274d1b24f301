"""Arbitrary bytes as everything the initiator sends -> the responder handshake.

The real ResponderHandshake (mock attestation, development config) is driven
exactly as channel._handshake drives it: frames come out of a FrameDecoder with
the handshake buffer limit, msg 1 -> on_hello, msg 2 is produced, msg 3 ->
on_confirmation.  The end of the input is the peer closing the stream.  Each
run must end in a CmlpError, at EOF, or in an established session, whose
residual frames then go through the record layer (see _session.receive_records).
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    import _session

    from cmlp.errors import CmlpError
    from cmlp.transport.handshake import ResponderHandshake

MAX_INPUT = 1 << 17


def test_one_input(data: bytes) -> None:
    hs = ResponderHandshake(
        _session.PROVIDER,
        _session.VERIFIER,
        _session.CONFIG,
        secret_key=_session.SK_RESPONDER,
        nonce=_session.NONCE_RESPONDER,
    )
    decoder = _session.handshake_decoder()
    decoder.feed(data)
    try:
        hello = decoder.next_frame()
        if hello is None:
            return  # Closed before msg 1
        _session.check_reply(hs.on_hello(hello), 0)
        confirmation = decoder.next_frame()
        if confirmation is None:
            return  # Closed before msg 3
        hs.on_confirmation(confirmation)
    except CmlpError:
        assert hs.keys is None, "a failed handshake left session keys behind"
        return
    assert hs.keys is not None, "the handshake finished without keys"
    _session.receive_records(hs.keys, decoder)


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=8192)
