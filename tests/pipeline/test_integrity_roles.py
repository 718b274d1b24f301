"""Attack 5 of issue 10: a stage's position in the pipeline is bound into its attestation.

With the documented pins (PCR8, the same signer on every stage) measurements say
which code runs, not where: the host could relay stage 0 straight into stage 2
(skipping stage 1's layers: a model-extraction aid), swap stages or run one
twice.  Every party now attests its role (stage index + pipeline digest) through
the attested nonce, and every peer checks the role it expects.  These tests run
under the Nitro test PKI with real NitroProvider/NitroVerifier and PCR8-only pins.
"""

import copy
import socket

import pytest

pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

from cmlp import errors  # noqa: E402
from cmlp.attestation import MockProvider, MockVerifier  # noqa: E402
from cmlp.attestation.role import ORCHESTRATOR, Role  # noqa: E402
from cmlp.transport import SessionConfig  # noqa: E402
from tests.attestation.test_nitro_pipeline import (  # noqa: E402
    nitro_manifest,
    nitro_orchestrator,
    nitro_stage,
    pki,
    running,
    stage_log,
    start_fails,
    t,
    to_manifest,
    wait_for_error,
)
from tests.helpers.common import run_handshake  # noqa: E402
from tests.helpers.pipeline import free_ports  # noqa: E402

__all__ = ["pki", "stage_log"]  # fixtures used here


def pcr8_manifest(n=3, relay=False):
    return nitro_manifest(n, relay=relay, indices=(8,))


def test_honest_pipeline_with_roles_succeeds(pki):
    m = to_manifest(pcr8_manifest(3, relay=True))
    stages = [nitro_stage(m, i, pki) for i in range(3)]
    with running(stages):
        orch = nitro_orchestrator(m, pki)
        try:
            orch.start()
            assert orch.infer([[t("x", 5.0)]], seq_len=1).outputs[0][0].data[0, 0] == 5.0
            orch.shutdown()
        finally:
            orch.close()
    for s in stages:  # each document attested a role-bound nonce
        assert all(len(r["nonce"]) == 32 for r in s.nsm.requests)


@pytest.mark.slow  # waits out a data-channel deadline; swapped and duplicated roles: fast
def test_skip_stage_1_is_refused(pki):
    """The host connects stage 0's data_out straight to stage 2's data_in.  The host never
    sees that handshake: stage 2 itself refuses its upstream peer."""
    m = to_manifest(pcr8_manifest(3))
    stage2_in = m.stages[2].endpoint.data_in.endpoint
    with running(
        [nitro_stage(m, 0, pki, data_out_target=stage2_in), nitro_stage(m, 1, pki), nitro_stage(m, 2, pki)]
    ) as stages:
        start_fails(nitro_orchestrator(m, pki, data_setup_timeout=5))
        err = wait_for_error(stages[2], "role mismatch")
    assert "expected role stage 1" in err


def swapped(doc, a, b):
    out = copy.deepcopy(doc)
    ea, eb = out["stages"][a]["endpoint"], out["stages"][b]["endpoint"]
    for port in ("control",):
        ea[port], eb[port] = eb[port], ea[port]
    return out


def test_swapped_stages_are_refused_by_the_orchestrator(pki):
    """The host's manifest sends "stage 1" control traffic to stage 2 and vice versa."""
    doc = pcr8_manifest(3)
    m = to_manifest(doc)
    with running([nitro_stage(m, i, pki) for i in range(3)]):
        err = start_fails(nitro_orchestrator(to_manifest(swapped(doc, 1, 2)), pki))
    assert "role mismatch" in str(err) and "expected role stage" in str(err)


def test_duplicated_stage_is_refused(pki):
    """A second instance of stage 1 (same image, same manifest) stands in for stage 2."""
    doc = pcr8_manifest(3)
    m = to_manifest(doc)
    ctl, din = free_ports(2)
    dup_doc = copy.deepcopy(doc)
    dup_doc["stages"][1]["endpoint"]["control"]["addr"] = f"127.0.0.1:{ctl}"
    dup_doc["stages"][1]["endpoint"]["data_in"]["addr"] = f"127.0.0.1:{din}"
    host_doc = copy.deepcopy(doc)
    host_doc["stages"][2]["endpoint"]["control"]["addr"] = f"127.0.0.1:{ctl}"
    host_doc["stages"][2]["endpoint"]["data_in"]["addr"] = f"127.0.0.1:{din}"
    host_doc["stages"][1]["endpoint"]["data_out"]["addr"] = f"127.0.0.1:{din}"
    with running(
        [
            nitro_stage(m, 0, pki),
            nitro_stage(m, 1, pki),
            nitro_stage(m, 2, pki),
            nitro_stage(to_manifest(dup_doc), 1, pki),
        ]
    ):
        err = start_fails(nitro_orchestrator(to_manifest(host_doc), pki))
    assert "stage 2" in str(err) and "role mismatch" in str(err)


@pytest.mark.parametrize(
    "own, expected, fragment",
    [
        (Role(0, bytes(32)), Role(1, bytes(32)), "does not attest the expected role stage 1"),
        (Role(1, b"\x01" * 32), Role(1, bytes(32)), "does not attest the expected role"),
        (None, Role(1, bytes(32)), "attests no pipeline role"),
        (Role(ORCHESTRATOR, bytes(32)), Role(2, bytes(32)), "expected role stage 2"),
    ],
)
def test_generic_layer_checks_the_role(own, expected, fragment):
    """The check lives in the handshake: every platform (here mock) gets it."""
    a, b = socket.socketpair()
    init, resp = run_handshake(
        a,
        b,
        init_kwargs={"config": SessionConfig.development(handshake_timeout=5, own_role=own)},
        resp_kwargs={"config": SessionConfig.development(handshake_timeout=5, peer_role=expected)},
    )
    assert isinstance(resp, errors.RoleMismatch) and fragment in str(resp)


def test_matching_roles_and_unbound_peers_interoperate():
    """Same role on both ends: accepted.  No role on either end: the reference's behaviour."""
    role = Role(3, b"\x07" * 32)
    for own, expected in ((role, role), (None, None)):
        a, b = socket.socketpair()
        init, resp = run_handshake(
            a,
            b,
            init_kwargs={"config": SessionConfig.development(own_role=own)},
            resp_kwargs={"config": SessionConfig.development(peer_role=expected)},
        )
        assert not isinstance(resp, BaseException) and not isinstance(init, BaseException)
        init.close()
        resp.close()
    # a mock document carries the bound nonce in its nonce field
    from cmlp.attestation.mock import decode_mock_document

    doc = MockProvider().attest(None, role.bind(bytes(32)), bytes(32))
    assert decode_mock_document(doc)[1] == role.bind(bytes(32)) != bytes(32)
    assert MockVerifier().verify(doc).nonce == role.bind(bytes(32))
