"""Short bounded atheris runs of every harness in fuzz/, and regressions of what they found.

Each harness runs ~5 s in a subprocess over its committed seed corpus (new inputs
go to a temporary directory, so fuzz/corpus/ stays clean).  When clang is on the
machine the ASan + libFuzzer-instrumented extensions are built first
(fuzz/build.sh), so the Cython parsers get native coverage and ASan checks;
otherwise the harnesses run with Python-level coverage only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmlp import _frame, errors
from cmlp.pipeline import control as C
from cmlp.transport.wire import Tensor
from tests.helpers.common import rss_limit_mb

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"
HARNESSES = (
    "frame_decode",
    "tensor_decode",
    "handshake_resp",
    "handshake_init",
    "aead_open",
    "control_decode",
    "hostblind_decode",
    "manifest",
    "mock_document",
    "model_files",
)
SECONDS = 5


@pytest.fixture(scope="module")
def fuzz_env():
    """Environment for the harness subprocesses; builds the native extensions when it can."""
    pytest.importorskip("atheris")
    env = dict(os.environ)
    if shutil.which("clang"):
        build = subprocess.run(
            ["bash", str(FUZZ / "build.sh")],
            capture_output=True,
            text=True,
            env={**env, "PYTHON": sys.executable},
            timeout=300,
        )
        assert build.returncode in (0, 3), build.stderr[-3000:]  # 3: Python-level only
    else:
        env["CMLP_FUZZ_NATIVE"] = "0"
    return env


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_finds_nothing_on_the_seed_corpus(name, fuzz_env, tmp_path):
    new_inputs, artifacts = tmp_path / "new", tmp_path / "artifacts"
    new_inputs.mkdir()
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(FUZZ / f"fuzz_{name}.py"),
        str(new_inputs),
        str(FUZZ / "corpus" / name),
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        f"-rss_limit_mb={rss_limit_mb()}",
        "-malloc_limit_mb=16",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, env=fuzz_env, cwd=tmp_path, timeout=SECONDS + 60
    )
    log = run.stdout + run.stderr
    found = sorted(p.name for p in artifacts.iterdir())
    assert run.returncode == 0 and not found, f"finding(s) {found}:\n{log[-6000:]}"
    execs = re.search(r"stat::number_of_executed_units: *(\d+)", log)
    assert execs and int(execs.group(1)) > 100, log[-3000:]


def test_seed_corpus_is_small_and_has_the_reference_shapes():
    corpus = FUZZ / "corpus"
    files = [p for p in corpus.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1 << 20
    for name, count in (
        ("frame_decode", 7),
        ("handshake_init", 6),
        ("handshake_resp", 6),
        ("tensor_decode", 5),
        ("aead_open", 4),
    ):
        for i in range(1, count + 1):
            assert (corpus / name / f"seed_{i}").is_file(), (name, i)
    for name in HARNESSES:
        assert any((corpus / name).iterdir()), name
    # frame-shaped seeds carry protocol version 4 (the reference's carry 2)
    for path in (corpus / "frame_decode").iterdir():
        assert path.read_bytes()[:3] == b"\xcf\x4d\x04", path.name


# ---------------------------------------------------------------------------
# regressions of fuzzer findings
# ---------------------------------------------------------------------------
def test_tensor_with_zero_dim_and_unindexable_shape_is_shape_overflow():
    """fuzz_tensor_decode: numpy's ValueError escaped Tensor.from_payload (fixed in wire.py)."""
    payload = _frame.encode_tensor("x", 6, (0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), b"")
    with pytest.raises(errors.ShapeOverflow):
        Tensor.from_payload(payload)
    # a zero dimension with a representable shape still decodes (reference semantics)
    ok = Tensor.from_payload(_frame.encode_tensor("x", 6, (0, 7, 9), b""))
    assert ok.data.shape == (0, 7, 9)


@pytest.mark.parametrize(
    "text", ["[" * 5000, '{"vocab_size": ' + "1" * 5000 + "}"], ids=["deep-nesting", "huge-int"]
)
def test_bad_config_json_is_a_model_error(text, tmp_path):
    """fuzz_model_files: RecursionError / int-digits ValueError escaped load_config (fixed)."""
    from cmlp.model.config import load_config

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(errors.ModelError):
        load_config(tmp_path)


def test_control_string_with_lone_surrogate_is_rejected():
    """fuzz_control_decode: a "\\ud800" escape decoded to a str that encode() cannot send.

    serde_json (the reference) rejects it; cmlp now does too, so a stage can no
    longer be made to fail while echoing an AbortRequest reason (fixed in control.py).
    """
    raw = b'{"version":1,"msg":{"type":"AbortRequest","request_id":1,"reason":"\\ud800"}}'
    with pytest.raises(errors.ProtocolError):
        C.decode_orchestrator_msg(raw)
    ok = C.decode_orchestrator_msg(
        b'{"version":1,"msg":{"type":"AbortRequest","request_id":1,"reason":"\\ud83d\\ude00"}}'
    )
    assert ok.reason == "\U0001f600" and C.decode_orchestrator_msg(ok.encode()) == ok


def test_stage_init_with_deeply_nested_spec_is_a_protocol_error():
    """RecursionError from json.loads of an Init's nested spec escaped the stage's typed
    handling and ended even a persistent stage (fixed in stage.py by commit 1e38206)."""
    from cmlp.pipeline.stage import StageWorker

    worker = StageWorker.__new__(StageWorker)  # only the Init parsing runs
    with pytest.raises(errors.ProtocolError):
        worker._control_phase(None, C.Init("[" * 100_000, "{}", 1))
