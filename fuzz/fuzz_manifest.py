"""Arbitrary bytes -> Manifest.from_json (pipeline.md 1); round-trip on success."""

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.errors import CmlpError
    from cmlp.manifest import Manifest

MAX_INPUT = (1 << 20) + 1024  # just over MAX_MANIFEST_BYTES: the size check runs


def test_one_input(data: bytes) -> None:
    try:
        manifest = Manifest.from_json(data)
    except CmlpError:
        return
    again = Manifest.from_json(manifest.dumps())
    assert again == manifest, "dumps() does not load back to the same manifest"
    for stage in manifest.stages:
        stage.measurements()
        stage.security_fields()
    manifest.relayed_links()


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=8192)
