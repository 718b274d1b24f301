"""run_nitro.sh / build_nitro.sh in host-blind mode (HOST_BLIND=1), as dry runs without AWS.

The run launches the host-blind images, writes the host manifest (real CIDs,
stage 0's client endpoint on stage 0's CID), starts `cmlp serve` (which
forwards clients' TCP connections to stage 0's vsock port) and runs
`cmlp generate --profile production` against it.
"""

import pytest

from cmlp.manifest import Manifest
from cmlp.transport.sockets import VsockAddr
from tests.packaging.test_deploy_scripts import (  # noqa: F401
    BUILD,
    REPO,
    RUN,
    bare_path,
    commands,
    emitted,
    inputs,
    run_script,
    script_env,
)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_run_dry_run_host_blind(bare_path, inputs, tmp_path, n):  # noqa: F811
    env = script_env(
        bare_path, **inputs, HOST_BLIND=1, LISTEN="0.0.0.0:9443", GENERATE_ARGS="--latency-out /tmp/l.json"
    )
    r = run_script(RUN, ["--dry-run", "Hello there", 7, n], env, tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    build = inputs["NITRO_BUILD_DIR"]
    launches = [c for c in cmds if c.startswith("nitro-cli run-enclave")]
    assert launches == [
        f"nitro-cli run-enclave --eif-path {build}/cmlp-gpt2-hb-{n}stage-s{i}.eif "
        f"--memory 4096 --cpu-count 2 --enclave-name cmlp-stage{i}"
        for i in range(n)
    ]
    ((path, text),) = emitted(r.stdout).items()
    m = Manifest.from_json(text)
    shipped = Manifest.load(REPO / "manifests" / f"manifest_{n}stage_hostblind_vsock.json")
    assert m.client_endpoint.endpoint == VsockAddr(16, 5003)  # stage 0's CID
    for i, (got, want) in enumerate(zip(m.stages, shipped.stages, strict=True)):
        assert got.endpoint.control.endpoint.cid == got.endpoint.data_in.endpoint.cid == 16 + i
        assert got.endpoint.data_out == want.endpoint.data_out
        assert list(got.expected_measurements) == ["8"]
    if n > 1:
        assert m.feedback_relayed()  # the host relays last stage -> stage 0
    serve = [c for c in cmds if c.startswith("cmlp serve")]
    assert serve == [
        f"cmlp serve --manifest {path} --listen 0.0.0.0:9443 --attestation nitro --host-attestation none"
    ]
    gen = [c for c in cmds if c.startswith("cmlp generate")]
    assert gen == [
        f"cmlp generate --connect 127.0.0.1:9443 --manifest {path} --text "
        "Hello\\ there --max-tokens 7 --profile production --latency-out /tmp/l.json"
    ]
    assert not any(c.startswith("cmlp-orch") for c in cmds)
    terminations = [c for c in cmds if c.startswith("nitro-cli terminate-enclave")]
    assert len(terminations) == n and cmds.index(gen[0]) < cmds.index(terminations[0])


def test_build_dry_run_host_blind_bakes_the_host_blind_manifest(
    bare_path,  # noqa: F811 (pytest fixture imported above)
    inputs,  # noqa: F811
    tmp_path,
):
    r = run_script(BUILD, ["--dry-run", 2], script_env(bare_path, **inputs, HOST_BLIND=1), tmp_path)
    assert r.returncode == 0, r.stderr
    files = emitted(r.stdout)
    baked = [p for p in files if p.endswith("manifests/manifest_2stage_hostblind_vsock.json")]
    assert len(baked) == 1
    m = Manifest.from_json(files[baked[0]])
    assert m.host_blind and m.client_endpoint.endpoint.port == 5003
    assert all(list(s.expected_measurements) == ["8"] for s in m.stages)
    assert any("cmlp-gpt2-hb-2stage-s1" in c for c in commands(r.stdout))
