"""Asymmetric AWS Nitro attestation through whole pipelines (no hardware).

Every stage attests itself with a real :class:`NitroProvider` whose transport
is a fake NSM: it decodes the CBOR ``Attestation`` request exactly as
``/dev/nsm`` would receive it and answers with a COSE_Sign1 document signed
by the test PKI (``nitro_pki``), binding the requested nonce, public key and
user_data, and carrying that stage's own PCRs.  Every verifier is a real
:class:`NitroVerifier` pinned to the test root.  The host orchestrator has no
NSM: it presents an empty document (:class:`NoAttestation`).

What the configuration promises, and what is checked here:

* the orchestrator pins each stage to the manifest's PCR0/1/2;
* a stage accepts the unattested host only with ``host_unattested``;
* a stage verifies the host with its own (Nitro) verifier, so a host that
  presents a *mock* document is refused: mock documents are accepted only by
  a stage configured for mock attestation;
* stage-to-stage links are mutually Nitro-attested and pinned to the
  neighbour's manifest entry, and an empty document is never accepted there
  (the host relays those links and could otherwise stand in for a stage);
* stale documents, foreign roots, forged chains and replayed documents fail.
"""

import copy
import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
import pytest

cbor2 = pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.attestation.factory import NoAttestation, make_verifier
from cmlp.attestation.nitro import NitroVerifier
from cmlp.attestation.nsm import NitroProvider
from cmlp.manifest import Manifest
from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
from cmlp.pipeline.stage import StageConfig, StageWorker
from cmlp.transport import SessionConfig
from cmlp.transport.handshake import HELLO_FIXED, encode_hello
from cmlp.transport.wire import Tensor
from tests.helpers import nitro_pki as P
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import (
    FAST_RETRY,
    REPO,
    StageThread,
    cli_env,
    manifest_dict,
    start_stage_process,
    stop_processes,
    write_manifest,
)


# ---------------------------------------------------------------------------
# test PKI valid *now* (the verifier runs on the real clock here)
# ---------------------------------------------------------------------------
def realtime_pki(root_key=None, root_name="cmlp-test-root") -> P.Pki:
    shift = datetime.now(timezone.utc) - P.T0  # nitro_pki's validities are around T0
    return P.make_pki(
        root_key=root_key,
        root_name=root_name,
        leaf_validity=(shift - P.HOUR, shift + 2 * P.HOUR),
        inter_validity=(shift - 240 * P.HOUR, shift + 240 * P.HOUR),
        root_validity=(shift - 10000 * P.HOUR, shift + 10000 * P.HOUR),
    )


@pytest.fixture(scope="module")
def pki():
    return realtime_pki()


@pytest.fixture(scope="module")
def other_pki():
    return realtime_pki(root_name="someone-else-root")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sha384(text: str) -> bytes:
    return hashlib.sha384(text.encode()).digest()


KERNEL_PCR1 = sha384("nitro kernel + bootstrap")  # the same for every image
SIGNER_PCR8 = sha384("operator signing certificate")  # the same for every signed image


def stage_pcrs(i: int, image: str = "genuine") -> dict:
    """PCR0 (image), PCR1 (kernel), PCR2 (application): each stage its own image."""
    return {
        0: sha384(f"{image} stage {i} enclave image"),
        1: KERNEL_PCR1,
        2: sha384(f"{image} stage {i} application"),
        8: SIGNER_PCR8,
    }


def pins_json(pcrs: dict, indices=(0, 1, 2)) -> dict:
    return {str(k): pcrs[k].hex() for k in indices}


class FakeNsm:
    """Stands in for /dev/nsm behind NitroProvider's transport.

    Decodes the request as the NSM would, and signs a document binding the
    requested nonce / public_key / user_data, with this enclave's PCRs (the
    other registers of the 16 zero, as on hardware).  Knobs for the attacks:
    ``age_ms`` back-dates the timestamp, ``cabundle`` replaces the chain,
    ``replay`` ignores the request and returns a document made for another
    handshake.
    """

    def __init__(self, pki: P.Pki, pcrs: dict, *, age_ms: int = 0, cabundle=None, replay: bool = False):
        self.pki, self.pcrs, self.age_ms = pki, dict(pcrs), age_ms
        self.cabundle, self.replay = cabundle, replay
        self.requests = []
        self.lock = threading.Lock()

    def __call__(self, request: bytes) -> bytes:
        body = cbor2.loads(request)
        assert list(body) == ["Attestation"]
        req = body["Attestation"]
        with self.lock:
            self.requests.append(req)
        fields = P.default_fields(self.pki, timestamp_ms=now_ms() - self.age_ms)
        fields["pcrs"] = {i: self.pcrs.get(i, bytes(48)) for i in range(16)}
        if not self.replay:
            fields.update(nonce=req["nonce"], public_key=req["public_key"], user_data=req["user_data"])
        if self.cabundle is not None:
            fields["cabundle"] = self.cabundle
        return cbor2.dumps({"Attestation": {"document": P.make_document(self.pki, fields=fields)}})


class RecordingVerifier:
    """A NitroVerifier that remembers what it accepted (platform, PCR0)."""

    def __init__(self, inner):
        self.inner = inner
        self.platform = inner.platform
        self.accepted = []

    def verify(self, document):
        verified = self.inner.verify(document)
        self.accepted.append((verified.platform, verified.measurements.get(0)))
        return verified


class EmptyDocumentOnCall:
    """Wraps a provider; the listed attest() calls (0-based) return an empty document.

    Models a peer that presents no document on one particular channel, e.g.
    the host answering a relayed stage-to-stage link in the neighbour's place.
    """

    def __init__(self, inner, calls):
        self.inner, self.calls, self.n = inner, set(calls), 0

    def attest(self, user_data, nonce, public_key):
        n, self.n = self.n, self.n + 1
        return b"" if n in self.calls else self.inner.attest(user_data, nonce, public_key)


# ---------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------
def nitro_manifest(n, relay=True, pcrs=stage_pcrs, indices=(0, 1, 2), **kw) -> dict:
    overrides = {i: {"expected_measurements": pins_json(pcrs(i), indices)} for i in range(n)}
    return manifest_dict(n, relay=relay, stage_overrides=overrides, **kw)


def to_manifest(doc: dict) -> Manifest:
    return Manifest.from_json(json.dumps(doc))


def repin(doc: dict, stage: int, pcrs: dict) -> dict:
    """A copy of a manifest dict with ``stage``'s pins replaced."""
    out = copy.deepcopy(doc)
    out["stages"][stage]["expected_measurements"] = pins_json(pcrs)
    return out


def nitro_stage(
    manifest,
    idx,
    pki,
    executor=None,
    *,
    pcrs=None,
    nsm=None,
    provider=None,
    verifier=None,
    host_unattested=True,
    session=None,
    **kw,
) -> StageThread:
    nsm = nsm or FakeNsm(pki, pcrs or stage_pcrs(idx))
    stage = StageThread(
        manifest,
        idx,
        executor or IdentityExecutor(),
        provider=provider or NitroProvider(transport=nsm),
        verifier=verifier or RecordingVerifier(NitroVerifier(root_pem=pki.root_pem)),
        session=session or SessionConfig(handshake_timeout=10),  # Production
        host_unattested=host_unattested,
        data_setup_timeout=10,
        **kw,
    )
    stage.nsm = nsm
    return stage


def nitro_orchestrator(manifest, pki, host=None, session=None, **kw) -> Orchestrator:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("data_setup_timeout", 10)
    kw.setdefault("require_measurements", True)
    config = OrchestratorConfig(
        provider=host or NoAttestation(),
        verifier=NitroVerifier(root_pem=pki.root_pem),
        session=session or SessionConfig(handshake_timeout=10),
        **kw,
    )
    return Orchestrator(manifest, config)


def t(name, value, shape=(1, 4)):
    return Tensor.from_array(name, np.full(shape, value, np.float32))


def stop_all(orch, stages, join=False):
    """Close the orchestrator and the stages' listeners.  Only a stage whose session ended
    (Shutdown) can be joined: one blocked in accept() stays so (a daemon thread)."""
    if orch is not None:
        orch.close()
    for s in stages:
        s.stop()
    if join:
        for s in stages:
            assert s.join(), f"stage {s.worker.idx} did not end"


@contextmanager
def running(stages):
    """Stop these stage threads on the way out."""
    try:
        yield stages
    finally:
        stop_all(None, stages)


class StageLog(logging.Handler):
    """Every warning of cmlp.pipeline.stage: refused handshakes are logged there (the
    worker's last_error is overwritten by whatever ends the session later)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(autouse=True)
def stage_log():
    logger = logging.getLogger("cmlp.pipeline.stage")
    handler, old_level = StageLog(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    global STAGE_LOG
    STAGE_LOG = handler
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


STAGE_LOG = None


def wait_for_error(stage, fragment, timeout=15.0) -> str:
    """A failure of this stage mentioning ``fragment``: logged, or what ended its thread."""
    prefix = f"stage {stage.worker.idx}: "
    end = time.monotonic() + timeout
    while True:
        found = [line for line in list(STAGE_LOG.lines) if line.startswith(prefix) and fragment in line]
        if stage.error is not None and fragment in str(stage.error):
            found.append(str(stage.error))
        if found:
            return found[0]
        if time.monotonic() > end:
            raise AssertionError(
                f"stage {stage.worker.idx}: no failure mentioning {fragment!r}; "
                f"log {STAGE_LOG.lines}, thread error {stage.error!r}"
            )
        time.sleep(0.02)


def start_fails(orch, match=None):
    """``orch.start()`` must fail; returns the error (the orchestrator is closed)."""
    try:
        with pytest.raises(errors.CmlpError, match=match) as info:
            orch.start()
        return info.value
    finally:
        orch.close()


# ---------------------------------------------------------------------------
# success
# ---------------------------------------------------------------------------
@pytest.mark.fast_cases("3-True")
@pytest.mark.parametrize("n, relay", [(2, False), (2, True), (3, False), (3, True)])
def test_asymmetric_pipeline_succeeds(pki, n, relay):
    doc = nitro_manifest(n, relay=relay)
    m = to_manifest(doc)
    stages = [nitro_stage(m, i, pki) for i in range(n)]
    orch = nitro_orchestrator(m, pki)
    try:
        orch.start()
        for k in range(3):
            r = orch.infer([[t(f"x{k}", float(k))]], seq_len=1)
            assert r.outputs[0][0].name == f"x{k}" and r.outputs[0][0].data[0, 0] == k
        # the host verified each stage's Nitro document, pinned to that stage's PCRs
        for i, link in enumerate(orch.links):
            att = link.channel.peer_attestation
            assert att.platform == "nitro"
            assert {k: att.measurements[k] for k in (0, 1, 2)} == {
                k: v for k, v in stage_pcrs(i).items() if k in (0, 1, 2)
            }
        assert orch.data_in.peer_attestation.measurements[0] == stage_pcrs(0)[0]
        assert orch.data_out.peer_attestation.measurements[0] == stage_pcrs(n - 1)[0]
        orch.shutdown()
    finally:
        stop_all(orch, stages, join=True)
    for i, s in enumerate(stages):
        assert s.error is None, s.error
        # control + data_in + data_out: three NSM documents, each for a fresh nonce and key
        reqs = s.nsm.requests
        assert len(reqs) == 3
        assert len({r["nonce"] for r in reqs}) == 3 and len({r["public_key"] for r in reqs}) == 3
        assert all(
            len(r["nonce"]) == 32 and len(r["public_key"]) == 32 and r["user_data"] is None for r in reqs
        )
        # stages verified only their neighbours, with Nitro, pinned to the neighbour's PCR0
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < n]
        assert sorted(s.worker.config.verifier.accepted, key=lambda a: a[1]) == sorted(
            [("nitro", stage_pcrs(j)[0]) for j in neighbours], key=lambda a: a[1]
        )


def engine_greedy(model_dir, prompt, n):
    """Greedy ids from the unsharded engine in this process (the reference)."""
    from cmlp.model import Gpt2Shard
    from cmlp.pipeline.gpt2 import greedy_token

    shard = Gpt2Shard.load(model_dir, 0, 4, threads=1)
    out = []
    logits = shard.forward(np.asarray([list(prompt)], np.uint32))
    for _ in range(n):
        out.append(greedy_token(logits[0]))
        logits = shard.forward(np.asarray([[out[-1]]], np.uint32))
    return out


def test_gpt2_tiny_model_over_nitro_attested_pipeline(pki, tmp_path):
    from cmlp.model.synthetic import init_model
    from cmlp.pipeline.gpt2 import Gpt2Executor, generate

    model_dir = init_model(tmp_path / "tiny", preset="tiny")
    prompt = [464, 3139, 286, 4881, 318]
    expected = engine_greedy(model_dir, prompt, 8)

    m = to_manifest(
        nitro_manifest(2, relay=True, total_layers=4, splits=[(0, 2), (2, 4)], max_seq_len=64, hidden_dim=64)
    )
    stages = [nitro_stage(m, i, pki, Gpt2Executor(model_dir, threads=1)) for i in range(2)]
    orch = nitro_orchestrator(m, pki)
    try:
        orch.start()
        gen = generate(orch, prompt, 8)
        orch.shutdown()
    finally:
        stop_all(orch, stages)
    assert gen.generated_ids == expected
    assert all(s.error is None for s in stages)


def test_signer_pcr8_pins_work_like_the_deployment(pki):
    """deploy/nitro: every manifest entry pins PCR8 (the EIF signing certificate)."""
    m = to_manifest(nitro_manifest(3, indices=(8,)))
    stages = [nitro_stage(m, i, pki) for i in range(3)]
    orch = nitro_orchestrator(m, pki)
    try:
        orch.start()
        assert orch.infer([[t("x", 1.0)]], seq_len=1).outputs[0][0].name == "x"
        orch.shutdown()
    finally:
        stop_all(orch, stages)
    # an unsigned image (PCR8 all zero, as in debug mode) is refused
    m = to_manifest(nitro_manifest(2, indices=(8,)))
    unsigned = {**stage_pcrs(1), 8: bytes(48)}
    with running([nitro_stage(m, 0, pki), nitro_stage(m, 1, pki, pcrs=unsigned)]):
        start_fails(nitro_orchestrator(m, pki), r"stage 1 failed: .*measurement\[8\] mismatch")


# ---------------------------------------------------------------------------
# the host's document
# ---------------------------------------------------------------------------
def test_host_mock_document_is_rejected_by_nitro_stages(pki):
    """The stage verifies the host with its Nitro verifier: a mock document is not an
    empty one, so host_unattested does not let it through."""
    m = to_manifest(nitro_manifest(2))
    with running([nitro_stage(m, i, pki) for i in range(2)]) as stages:
        # a hostile host runs whatever it likes: its own profile is development here (in
        # production the orchestrator itself refuses a mock provider at start-up)
        host = nitro_orchestrator(
            m, pki, host=MockProvider(), session=SessionConfig.development(handshake_timeout=10)
        )
        start_fails(host, "control connect")
        for s in stages:
            err = wait_for_error(s, "invalid COSE_Sign1")
            assert "initiator attestation verification failed" in err


def test_host_mock_document_is_accepted_only_by_a_stage_configured_for_mock(pki):
    m = to_manifest(nitro_manifest(1))
    # development profile: in production a stage cannot pin a host that has no measurements
    stage = nitro_stage(
        m,
        0,
        pki,
        verifier=MockVerifier(),
        host_unattested=False,
        session=SessionConfig.development(handshake_timeout=10),
    )
    orch = nitro_orchestrator(
        m, pki, host=MockProvider(), session=SessionConfig.development(handshake_timeout=10)
    )
    try:
        orch.start()
        assert orch.infer([[t("x", 2.0)]], seq_len=1).outputs[0][0].data[0, 0] == 2.0
        orch.shutdown()
    finally:
        stop_all(orch, [stage])
    assert stage.error is None


@pytest.mark.parametrize(
    "profile, reason",
    [
        ("development", "peer presented no attestation document"),
        ("production", "production security profile requires expected_measurements"),
    ],
)
def test_stage_without_host_unattested_refuses_the_unattested_host(pki, profile, reason):
    m = to_manifest(nitro_manifest(2))
    session = (
        SessionConfig(handshake_timeout=10)
        if profile == "production"
        else SessionConfig.development(handshake_timeout=10)
    )
    with running(
        [nitro_stage(m, 0, pki, session=session, host_unattested=False), nitro_stage(m, 1, pki)]
    ) as stages:
        start_fails(nitro_orchestrator(m, pki), "stage 0 failed: control connect")
        wait_for_error(stages[0], reason)
        # stage 1 accepts the host; at most it saw the orchestrator give up mid-handshake
        assert not [
            line for line in STAGE_LOG.lines if line.startswith("stage 1: control") and "closed" not in line
        ]


# ---------------------------------------------------------------------------
# a stage whose PCRs differ from its pins
# ---------------------------------------------------------------------------
def test_orchestrator_refuses_a_stage_with_other_pcrs(pki):
    m = to_manifest(nitro_manifest(3))
    with running(
        [nitro_stage(m, 0, pki), nitro_stage(m, 1, pki, pcrs=stage_pcrs(1, "evil")), nitro_stage(m, 2, pki)]
    ):
        err = start_fails(nitro_orchestrator(m, pki), r"stage 1 failed: control connect")
    assert "measurement[0] mismatch" in str(err)
    assert stage_pcrs(1)[0].hex() in str(err) and stage_pcrs(1, "evil")[0].hex() in str(err)


@pytest.mark.fast_cases("downstream")
@pytest.mark.parametrize("impostor, judge", [(1, 0), (0, 1)], ids=["downstream", "upstream"])
def test_neighbour_refuses_an_impostor_the_host_lets_in(pki, impostor, judge):
    """The host's manifest is edited to admit an impostor image; the neighbour still
    pins the genuine image (its own manifest) and refuses the stage-to-stage link."""
    n = 2
    genuine = nitro_manifest(n)
    evil = stage_pcrs(impostor, "evil")
    host_doc = repin(genuine, impostor, evil)  # what the host was made to accept
    stages = []
    for i in range(n):
        own = to_manifest(genuine if i == judge else host_doc)
        stages.append(nitro_stage(own, i, pki, pcrs=evil if i == impostor else None))
    with running(stages):
        orch = nitro_orchestrator(to_manifest(host_doc), pki, session=SessionConfig(handshake_timeout=3))
        start_fails(orch)
        err = wait_for_error(stages[judge], "measurement[0] mismatch")
    assert evil[0].hex() in err


# ---------------------------------------------------------------------------
# unattested peers on stage-to-stage links
# ---------------------------------------------------------------------------
def dev_unpinned_session():
    return SessionConfig.development(handshake_timeout=10, allow_unattested_peer=True)


# fast tier: the weakest configuration (unpinned, unattested peers allowed); the grid is slow
@pytest.mark.fast_cases("dev-unpinned-upstream")
@pytest.mark.parametrize(
    "empty_from, empty_call, judge",
    [
        (1, 1, 0),  # stage 1 answers stage 0's data_out with an empty document
        (0, 2, 1),  # stage 0 opens stage 1's data_in with an empty document
    ],
    ids=["downstream", "upstream"],
)
@pytest.mark.parametrize("pinned", [True, False], ids=["production-pinned", "dev-unpinned"])
def test_unattested_neighbour_is_never_accepted(pki, empty_from, empty_call, judge, pinned):
    """Even with host_unattested (and, unpinned, even with a base config that allows
    unattested peers), an empty document is refused on a stage-to-stage link.

    attest() calls of a stage: 0 control, then data_in and data_out in the order the
    data phase runs them (stage 0: host data_in = 1, data_out to stage 1 = 2;
    stage 1: data_in from stage 0 = 1, data_out to the host = 2).
    """
    n = 2
    m = to_manifest(nitro_manifest(n) if pinned else manifest_dict(n, relay=True))
    session = None if pinned else dev_unpinned_session()
    stages = []
    for i in range(n):
        provider = None
        if i == empty_from:
            provider = EmptyDocumentOnCall(NitroProvider(transport=FakeNsm(pki, stage_pcrs(i))), [empty_call])
        stages.append(nitro_stage(m, i, pki, provider=provider, session=session))
    orch_session = (
        SessionConfig(handshake_timeout=3) if pinned else SessionConfig.development(handshake_timeout=3)
    )
    with running(stages):
        start_fails(nitro_orchestrator(m, pki, session=orch_session, require_measurements=pinned))
        wait_for_error(stages[judge], "peer presented no attestation document")


def test_stage_session_configs(pki):
    """_session_config: the host may be unattested; a neighbour never."""
    m = to_manifest(nitro_manifest(3))
    for base in (SessionConfig(), dev_unpinned_session()):
        config = StageConfig(
            provider=NoAttestation(),
            verifier=NitroVerifier(root_pem=pki.root_pem),
            session=base,
            host_unattested=True,
        )
        w = StageWorker(m, 1, IdentityExecutor(), config)  # not bound: no I/O here
        host = w._session_config(None)
        assert host.allow_unattested_peer and host.expected_measurements is None
        for peer in (0, 2):
            cfg = w._session_config(peer)
            assert not cfg.allow_unattested_peer
            assert dict(cfg.expected_measurements.items()) == {
                k: v for k, v in stage_pcrs(peer).items() if k in (0, 1, 2)
            }


# ---------------------------------------------------------------------------
# bad documents
# ---------------------------------------------------------------------------
def refused_stage_1(pki, nsm, match=r"stage 1 failed: control connect"):
    """A 2-stage pipeline whose stage 1 attests through ``nsm``: the error of start()."""
    m = to_manifest(nitro_manifest(2))
    with running([nitro_stage(m, 0, pki), nitro_stage(m, 1, pki, nsm=nsm)]):
        return str(start_fails(nitro_orchestrator(m, pki), match))


def test_expired_document_is_refused(pki):
    err = refused_stage_1(pki, FakeNsm(pki, stage_pcrs(1), age_ms=301_000))
    assert "attestation document expired" in err


def test_document_from_another_root_is_refused(pki, other_pki):
    err = refused_stage_1(pki, FakeNsm(other_pki, stage_pcrs(1)))
    assert "cabundle root does not match" in err


def test_forged_chain_under_the_pinned_root_is_refused(pki):
    """The attacker copies the genuine root into cabundle but signs with its own CA."""
    forger = realtime_pki(root_name="cmlp-test-root")  # same name, another key
    err = refused_stage_1(pki, FakeNsm(forger, stage_pcrs(1), cabundle=[pki.root_der, forger.inter_der]))
    assert "certificate chain broken" in err


def test_replayed_document_is_refused(pki):
    """A genuine document made for another handshake (other nonce and key)."""
    err = refused_stage_1(pki, FakeNsm(pki, stage_pcrs(1), replay=True))
    assert "public key does not match" in err


# ---------------------------------------------------------------------------
# the wire: what an unattested side sends, and how verifiers see it
# ---------------------------------------------------------------------------
def test_empty_document_on_the_wire_and_reference_verdicts(pki):
    hello = encode_hello(1, bytes(32), bytes(range(32)), NoAttestation().attest(None, b"n", b"k"))
    assert len(hello) == HELLO_FIXED and hello[65:69] == b"\x00\x00\x00\x00"  # doc_len 0
    with pytest.raises(errors.VerificationFailed, match="not a mock attestation document"):
        MockVerifier().verify(b"")
    with pytest.raises(errors.VerificationFailed, match="invalid COSE_Sign1"):
        NitroVerifier(root_pem=pki.root_pem).verify(b"")


def test_make_verifier_root_option(pki):
    v = make_verifier("nitro", pki.root_pem)
    assert v.root.der == pki.root_der
    assert make_verifier("nitro").root.sha256.startswith("641a0321")
    with pytest.raises(ValueError, match="only applies to nitro"):
        make_verifier("mock", pki.root_pem)


# ---------------------------------------------------------------------------
# the command-line tools: --attestation nitro, --host-attestation, --nitro-root-pem
# ---------------------------------------------------------------------------
def run_orch_cli(manifest_path, *extra, text="The capital of France is", max_tokens=4):
    cmd = [
        sys.executable,
        "-m",
        "cmlp.cli.orch",
        "--manifest",
        str(manifest_path),
        "--text",
        text,
        "--max-tokens",
        str(max_tokens),
        "--attestation",
        "nitro",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=120, cwd=REPO)


def test_orch_cli_against_nitro_stages(pki, tmp_path):
    from cmlp.model.synthetic import init_model
    from cmlp.pipeline.gpt2 import Gpt2Executor
    from cmlp.tokenizer import load_tokenizer

    model_dir = init_model(tmp_path / "tiny", preset="tiny")
    doc = nitro_manifest(
        2, relay=True, total_layers=4, splits=[(0, 2), (2, 4)], max_seq_len=64, hidden_dim=64
    )
    m = to_manifest(doc)
    path = write_manifest(tmp_path, doc)
    root = tmp_path / "test-root.pem"
    root.write_bytes(pki.root_pem)
    stages = [nitro_stage(m, i, pki, Gpt2Executor(model_dir, threads=1), persistent=True) for i in range(2)]
    try:
        # the bundled AWS root does not trust the test PKI
        r = run_orch_cli(path, "--host-attestation", "none")
        assert r.returncode == 1, r.stderr
        assert "cabundle root does not match" in r.stderr
        # a host presenting a mock document is refused by the Nitro stages
        r = run_orch_cli(path, "--host-attestation", "mock", "--nitro-root-pem", root)
        assert r.returncode == 1, r.stderr
        wait_for_error(stages[0], "invalid COSE_Sign1")
        # the asymmetric set-up: stages attested, the host presents nothing
        r = run_orch_cli(path, "--host-attestation", "none", "--nitro-root-pem", root)
        assert r.returncode == 0, r.stderr
        assert "testing/staging only" in r.stderr
        tok = load_tokenizer(None)
        prompt = "The capital of France is"
        expected = engine_greedy(model_dir, tok.encode(prompt), 4)
        assert r.stdout == prompt + "".join(tok.decode_one(i) for i in expected) + "\n"
        assert "Tokens generated: 4" in r.stderr
    finally:
        stop_all(None, stages)


def test_stage_cli_nitro_root_option(pki, other_pki, tmp_path):
    """The stage verifies an attested host against --nitro-root-pem, then (no /dev/nsm
    here) fails to attest itself: the log says which of the two steps failed."""
    doc = manifest_dict(1)
    path = write_manifest(tmp_path, doc)
    root = tmp_path / "test-root.pem"
    root.write_bytes(pki.root_pem)
    m = to_manifest(doc)
    host = NitroProvider(transport=FakeNsm(pki, stage_pcrs(9)))
    base = ["--attestation", "nitro", "--host-unattested", "--profile", "production", "--persistent"]
    for extra, expect in (
        ([], "cabundle root does not match"),
        (["--nitro-root-pem", str(root)], "NSM device /dev/nsm not found"),
    ):
        proc = start_stage_process(path, 0, extra=base + extra, executor="identity")
        try:
            orch = Orchestrator(
                m,
                OrchestratorConfig.development(
                    host,
                    NitroVerifier(root_pem=pki.root_pem),
                    retry=FAST_RETRY,
                    session=SessionConfig.development(handshake_timeout=10),
                ),
            )
            with pytest.raises(errors.StageFailed, match="control connect"):
                orch.start()
            orch.close()
            # the stage closes the connection before it logs why: wait for the line
            err = read_stderr_until(proc, expect)
        finally:
            stop_processes([proc])
        assert expect in err, err
        if extra:
            assert "testing/staging only" in err


def read_stderr_until(proc, fragment, timeout=15.0) -> str:
    """What the process has written to stderr, once it contains ``fragment`` (or on timeout)."""
    fd = proc.stderr.fileno()
    out = b""
    end = time.monotonic() + timeout
    while fragment.encode() not in out and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attestation", "mock"], "only applies to nitro attestation"),
        (["--attestation", "nitro"], "root CA is not a PEM certificate"),
    ],
)
def test_stage_cli_nitro_root_errors(tmp_path, args, message):
    path = write_manifest(tmp_path, manifest_dict(1))
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    proc = start_stage_process(path, 0, extra=[*args, "--nitro-root-pem", str(bad)], executor="identity")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop_processes([proc])
    assert proc.returncode == 1 and message in err, err
