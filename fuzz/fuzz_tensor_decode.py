"""Arbitrary bytes -> Tensor.from_payload (transport.md 2.5); round-trip on success."""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    import _checks

MAX_INPUT = 1 << 16


def test_one_input(data: bytes) -> None:
    _checks.check_tensor(data)
    # the bytearray and memoryview paths must agree with bytes (channel passes views)
    _checks.check_tensor(memoryview(bytearray(data)))


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=4096)
