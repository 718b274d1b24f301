"""Attack 6 of issue 10: every Init is checked against the stage's own manifest, every time.

Before: when the shard was already loaded, re-initialisation skipped the checks, so a
stage whose manifest says max_seq_len 16 answered Ready to
{"dtype":"BF16","hidden_dim":1,"max_seq_len":4294967295} and then served a 40-token
request.  Now the Init's activation spec must equal the stage's own, and the
executor re-checks it against the model even when nothing is reloaded.  The nested
specs are parsed with the strict JSON parser (duplicate keys refused).
"""

import json

import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.attestation.role import Role
from cmlp.manifest import compact_json
from cmlp.pipeline import control as C
from cmlp.pipeline.gpt2 import Gpt2Executor, generate
from cmlp.transport import SecureChannel, SessionConfig, sockets
from tests.helpers import mitm
from tests.helpers.model import PARITY
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator

WIDE = '{"dtype":"BF16","hidden_dim":1,"max_seq_len":4294967295}'


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


def control_as_orchestrator(m, idx=0):
    digest = m.pipeline_digest()
    return SecureChannel.connect(
        sockets.connect_retry(m.stages[idx].endpoint.control.endpoint),
        MockProvider(),
        MockVerifier(),
        SessionConfig.development(
            handshake_timeout=10, own_role=Role.orchestrator(digest), peer_role=Role(idx, digest)
        ),
    )


def send_init(m, stage_spec_json, activation_json):
    ch = control_as_orchestrator(m)
    ch.send(C.Init(stage_spec_json, activation_json, m.num_stages).encode())
    return ch


@pytest.mark.parametrize(
    "activation",
    [
        WIDE,
        '{"dtype":"F32","hidden_dim":64,"max_seq_len":512}',  # only max_seq_len widened
        '{"dtype":"F32","hidden_dim":64,"max_seq_len":8}',  # narrower: also not its own
    ],
)
def test_init_cannot_change_the_activation_spec_of_a_loaded_stage(model_dir, activation):
    m = make_manifest(1, splits=[(0, 4)], max_seq_len=16, hidden_dim=64)
    stage = StageThread(m, 0, Gpt2Executor(model_dir, threads=1), persistent=True)
    stage.worker.load()  # the shard is already loaded
    try:
        ch = send_init(m, compact_json(m.stages[0].to_json()), activation)
        with pytest.raises(errors.Closed):
            ch.recv(timeout=10)  # no Ready: the session is refused
        assert mitm.wait_until(lambda: stage.worker.last_error is not None, 5)
        err = stage.worker.last_error
        assert isinstance(err, errors.ProtocolError) and "differs from this stage's" in str(err)
        ch.close()
        # the honest orchestrator still gets Ready, and the manifest's limit holds:
        orch = orchestrator(m).start()
        try:
            generate(orch, list(range(10)), 4)
            with pytest.raises(errors.ProtocolError, match="exceeds manifest max_seq_len"):
                generate(orch, list(range(40)), 1)
            orch.shutdown()
        finally:
            orch.close()
    finally:
        stage.stop()


@pytest.mark.parametrize("bind_roles", [True, False])
def test_host_manifest_claiming_more_positions_is_refused(model_dir, bind_roles):
    """A host orchestrator whose manifest claims 512 positions cannot get them.  With role
    binding the pipeline digests differ and the handshake fails; without it (reference
    interop) the Init check refuses the widened activation spec."""
    m = make_manifest(1, splits=[(0, 4)], max_seq_len=16, hidden_dim=64)
    wide = json.loads(m.dumps())
    wide["activation_spec"]["max_seq_len"] = 512
    from cmlp.manifest import Manifest

    host_view = Manifest.from_json(json.dumps(wide))
    stage = StageThread(m, 0, Gpt2Executor(model_dir, threads=1), persistent=True, bind_roles=bind_roles)
    stage.worker.load()
    try:
        orch = orchestrator(host_view, bind_roles=bind_roles)
        with pytest.raises(errors.CmlpError):
            orch.start()
        orch.close()
        want = "role mismatch" if bind_roles else "differs from this stage's"
        assert mitm.wait_until(lambda: want in str(stage.worker.last_error), 5), stage.worker.last_error
    finally:
        stage.stop()


def test_executor_rechecks_activation_when_already_loaded(model_dir):
    m = make_manifest(1, splits=[(0, 4)], max_seq_len=16, hidden_dim=64)
    ex = Gpt2Executor(model_dir, threads=1)
    ex.init(m.stages[0], m.activation_spec, 1)
    from cmlp.manifest import ActivationSpec

    for bad, text in (
        (ActivationSpec("BF16", 64, 16), "not supported"),
        (ActivationSpec("F32", 1, 16), "hidden_dim 1"),
        (ActivationSpec("F32", 64, 4294967295), "n_positions"),
    ):
        with pytest.raises(errors.InitFailed, match=text):
            ex.init(m.stages[0], bad, 1)


@pytest.mark.parametrize(
    "field, text",
    [
        ("stage", '{"stage_idx":0,"stage_idx":0}'),
        ("activation", '{"dtype":"F32","dtype":"BF16","hidden_dim":64,"max_seq_len":16}'),
        ("activation", "[1, 2]"),
        ("stage", "[" * 100000 + "]" * 100000),
    ],
)
def test_nested_specs_use_the_strict_parser(field, text):
    m = make_manifest(1, max_seq_len=16, hidden_dim=4)
    stage = StageThread(m, 0, Gpt2Executor("/nonexistent"), persistent=True)
    try:
        spec = compact_json(m.stages[0].to_json())
        act = compact_json(m.activation_spec.to_json())
        ch = send_init(m, text if field == "stage" else spec, text if field == "activation" else act)
        with pytest.raises(errors.Closed):
            ch.recv(timeout=10)
        assert mitm.wait_until(lambda: stage.worker.last_error is not None, 5)
        err = stage.worker.last_error
        assert isinstance(err, errors.ProtocolError), err
        assert f"invalid {field}_spec" in str(err)
        ch.close()
    finally:
        stage.stop()
