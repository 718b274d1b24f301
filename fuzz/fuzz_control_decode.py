"""Arbitrary bytes -> both control-message decoders (pipeline.md 2.2-2.3).

Each decoder runs with a small limit (64 bytes: the size check comes before any
parsing) and with the default 4 MiB limit.  A decoded message must re-encode
and decode to an equal message.
"""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.errors import CmlpError, MessageTooLarge
    from cmlp.pipeline import control

MAX_INPUT = 1 << 16
SMALL_LIMIT = 64


def decode(decoder, data: bytes, limit: int):
    try:
        return decoder(data, limit)
    except CmlpError as exc:
        return exc


def test_one_input(data: bytes) -> None:
    for decoder in (control.decode_orchestrator_msg, control.decode_stage_msg):
        small = decode(decoder, data, SMALL_LIMIT)
        msg = decode(decoder, data, control.DEFAULT_MAX_CONTROL_MESSAGE_BYTES)
        if len(data) > SMALL_LIMIT:
            assert isinstance(small, MessageTooLarge), f"limit not enforced: {small!r}"
        else:
            assert type(small) is type(msg)
        if isinstance(msg, CmlpError):
            continue
        again = decoder(msg.encode())
        assert again == msg, f"round trip changed the message: {msg!r} -> {again!r}"


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=4096)
