"""Attack 2 of issue 10: the production profile must refuse mock attestation at start-up.

Before: ``--profile production`` accepted mock documents, so any process claiming a
stage's pinned measurements could take its place.  Now every entry point refuses
the combination with one clear line before it binds a port or loads a model.
"""

import sys
from pathlib import Path

import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier, MockVerifierWithMeasurements
from cmlp.attestation.factory import NoAttestation, refuse_mock_in_production
from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
from cmlp.pipeline.stage import StageConfig, StageWorker
from cmlp.transport import SessionConfig
from tests.cli.test_cli_errors import ORCH, one_line_error, run
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import make_manifest, write_manifest

FRAGMENT = "production profile refuses mock attestation"
# cmlp-stage with the identity test executor (no model needed)
IDENTITY_STAGE = [
    sys.executable,
    str(Path(__file__).resolve().parents[1] / "helpers" / "executors.py"),
    "identity",
]


@pytest.mark.parametrize(
    "extra", [[], ["--mock-measurement", "0=" + "aa" * 48], ["--host-unattested", "--persistent"]]
)
def test_stage_cli_refuses_mock_in_production(tmp_path, extra):
    path = write_manifest(tmp_path, make_manifest(1))
    one_line_error(
        run(
            IDENTITY_STAGE
            + [
                "--manifest",
                str(path),
                "--stage-idx",
                "0",
                "--profile",
                "production",
                "--attestation",
                "mock",
                *extra,
            ]
        ),
        FRAGMENT,
    )


@pytest.mark.parametrize(
    "extra", [["--attestation", "mock"], ["--attestation", "nitro", "--host-attestation", "mock"]]
)
def test_orch_cli_refuses_mock_in_production(tmp_path, extra):
    path = write_manifest(tmp_path, make_manifest(1))
    one_line_error(
        run(ORCH + ["--manifest", str(path), "--text", "hi", "--profile", "production", *extra]), FRAGMENT
    )


def test_library_entry_points_refuse_mock_in_production():
    m = make_manifest(2)
    prod = SessionConfig(handshake_timeout=5)
    for provider, verifier in (
        (MockProvider(), MockVerifier()),
        (NoAttestation(), MockVerifierWithMeasurements({0: b"x"})),
    ):
        with pytest.raises(errors.InsecureConfiguration, match=FRAGMENT):
            StageWorker(
                m, 0, IdentityExecutor(), StageConfig(provider=provider, verifier=verifier, session=prod)
            )
        with pytest.raises(errors.InsecureConfiguration, match=FRAGMENT):
            Orchestrator(m, OrchestratorConfig(provider=provider, verifier=verifier, session=prod))
    # the development profile keeps mock attestation for local runs and tests
    refuse_mock_in_production(False, MockProvider(), MockVerifier())
    StageWorker(m, 0, IdentityExecutor(), StageConfig(provider=MockProvider(), verifier=MockVerifier()))
