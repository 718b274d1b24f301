"""Bad local input: every mistake gives one clear line on stderr and a non-zero exit.

Tracebacks appear only with --log-level debug.
"""

import json
import shutil
import socket
import subprocess
import sys

import pytest

from tests.helpers.pipeline import cli_env, manifest_dict, write_manifest

STAGE = [sys.executable, "-m", "cmlp.cli.stage"]
ORCH = [sys.executable, "-m", "cmlp.cli.orch"]
CMLP = [sys.executable, "-m", "cmlp.cli.main"]


def run(cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout)


def one_line_error(res, *fragments):
    assert res.returncode != 0, res
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def good_manifest(tmp_path, **kw):
    doc = manifest_dict(2, total_layers=4, max_seq_len=1024, hidden_dim=64, **kw)
    return write_manifest(tmp_path, doc), doc


def test_missing_and_malformed_manifests(tmp_path, tiny):
    one_line_error(
        run(STAGE + ["--manifest", str(tmp_path / "nope.json"), "--stage-idx", "0"]), "file not found"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")
    one_line_error(run(STAGE + ["--manifest", str(bad), "--stage-idx", "0"]), "not valid JSON")
    _, doc = good_manifest(tmp_path)
    del doc["stages"][1]["layer_end"]
    path = write_manifest(tmp_path, doc, "missing.json")
    one_line_error(run(STAGE + ["--manifest", str(path), "--stage-idx", "0"]), "stage 1", "layer_end")
    one_line_error(run(ORCH + ["--manifest", str(path), "--text", "hi"]), "stage 1", "layer_end")


def test_stage_index_out_of_range(tmp_path):
    path, _ = good_manifest(tmp_path)
    one_line_error(
        run(STAGE + ["--manifest", str(path), "--stage-idx", "99"]),
        "stage_idx 99 out of range (manifest has 2 stages)",
    )


def test_wrong_model_directory(tmp_path):
    path, _ = good_manifest(tmp_path)
    one_line_error(
        run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(tmp_path / "empty")]),
        "config.json",
    )


def corrupt_copy(tiny, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(tiny, d)
    return d


def test_truncated_and_corrupted_weights(tiny, tmp_path):
    path, _ = good_manifest(tmp_path)
    d = corrupt_copy(tiny, tmp_path, "truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(
        run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(d)]), "model.safetensors"
    )
    d = corrupt_copy(tiny, tmp_path, "garbage")
    (d / "model.safetensors").write_bytes(b"\xff" * 64 + data[64:1000])
    one_line_error(
        run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(d)]), "model.safetensors"
    )


def test_config_disagreeing_with_weights(tiny, tmp_path):
    path, _ = good_manifest(tmp_path)
    d = corrupt_copy(tiny, tmp_path, "wrongcfg")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    one_line_error(run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(d)]))
    # the manifest's hidden_dim must agree with the model too
    path2, _ = good_manifest(tmp_path / "hd") if (tmp_path / "hd").mkdir() is None else None
    doc = json.loads(path2.read_text())
    doc["activation_spec"]["hidden_dim"] = 768
    path2.write_text(json.dumps(doc))
    one_line_error(
        run(STAGE + ["--manifest", str(path2), "--stage-idx", "0", "--model-dir", str(tiny)]),
        "hidden_dim 768",
    )


def test_tokenizer_missing(tmp_path):
    path, _ = good_manifest(tmp_path)
    one_line_error(
        run(
            ORCH
            + ["--manifest", str(path), "--text", "hi", "--tokenizer", str(tmp_path / "no-tokenizer.json")]
        ),
        "no-tokenizer.json",
    )


def test_occupied_port(tmp_path, tiny):
    path, doc = good_manifest(tmp_path)
    port = int(doc["stages"][0]["endpoint"]["control"]["addr"].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        one_line_error(
            run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(tiny)]),
            f"127.0.0.1:{port}",
            "in use",
        )


@pytest.mark.parametrize(
    "cmd, fragment",
    [
        (STAGE + ["--manifest", "m.json", "--stage-idx", "zero"], "invalid int value"),
        (STAGE + ["--manifest", "m.json", "--stage-idx", "0", "--attestation", "sgx"], "invalid choice"),
        (
            STAGE + ["--manifest", "m.json", "--stage-idx", "0", "--data-out-target", "example.com:1"],
            "not an IP literal",
        ),
        (STAGE + ["--manifest", "m.json", "--stage-idx", "0", "--mock-measurement", "zz"], "IDX=HEX"),
        (ORCH + ["--manifest", "m.json"], "one of the arguments --text --prompts-file is required"),
        (ORCH + ["--manifest", "m.json", "--text", "x", "--max-tokens", "many"], "invalid int"),
        (CMLP + ["echo-client", "--connect", "nowhere"], "invalid"),
        (CMLP + ["no-such-command"], "invalid choice"),
    ],
)
def test_unknown_cli_values(cmd, fragment):
    one_line_error(run(cmd), fragment)


def test_max_tokens_must_fit_the_context(tmp_path):
    path, _ = good_manifest(tmp_path)
    one_line_error(
        run(ORCH + ["--manifest", str(path), "--text", "hi", "--max-tokens", "5000"]), "needs", "positions"
    )


def test_debug_log_level_shows_the_traceback(tmp_path):
    res = run(STAGE + ["--manifest", str(tmp_path / "nope.json"), "--stage-idx", "0", "--log-level", "debug"])
    assert res.returncode != 0 and "Traceback" in res.stderr
