"""`cmlp model init` is idempotent, `--force` rewrites, a missing model dir hints its own path,
and writing or loading a model draws a progress bar with a known size (issue 17, items 1, 2, 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cmlp import progress
from cmlp.cli.main import main
from cmlp.model.synthetic import PRESETS, model_nbytes, random_weights
from tests.helpers.pipeline import cli_env, manifest_dict, write_manifest

CMLP = [sys.executable, "-m", "cmlp.cli.main"]
STAGE = [sys.executable, "-m", "cmlp.cli.stage"]


def run(cmd, **extra):
    env = cli_env()
    env.pop(progress.ENV, None)
    env.update(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fh") / "model"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--seed", "5"]) == 0
    return out


def test_same_preset_and_seed_is_reused_with_a_message(tiny):
    before = {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()}
    r = run(CMLP + ["model", "init", "--out", str(tiny), "--preset", "tiny", "--seed", "5"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tiny)
    assert "reusing it" in r.stderr and "'tiny'" in r.stderr and "seed 5" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()} == before  # nothing rewritten


def test_another_preset_or_seed_is_refused_naming_what_is_there(tiny):
    for extra in (["--preset", "tiny", "--seed", "6"], ["--preset", "small", "--seed", "5"]):
        r = run(CMLP + ["model", "init", "--out", str(tiny)] + extra)
        assert r.returncode == 1
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line
        assert "already exists" in line and "'tiny' model with seed 5" in line
        assert "--force" in line


def test_force_rewrites(tmp_path):
    out = tmp_path / "m"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--seed", "1"]) == 0
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--seed", "2", "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["cmlp_seed"] == 2
    # and the rewritten model is then reused as itself
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--seed", "2"]) == 0


def test_a_truncated_model_is_not_reused(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 0
    weights = out / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 4)
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 1
    assert "damaged" in capsys.readouterr().err
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--force"]) == 0
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 0


def test_real_weights_are_never_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "real"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 0
    config = json.loads((out / "config.json").read_text())
    config["cmlp_synthetic"] = False
    (out / "config.json").write_text(json.dumps(config))
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 1
    assert "did not write" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["models/my model", "nowhere"])
def test_stage_on_a_missing_model_dir_hints_the_given_path(tmp_path, given):
    doc = manifest_dict(2, total_layers=4, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc)
    missing = tmp_path / given
    r = run(STAGE + ["--manifest", str(path), "--stage-idx", "0", "--model-dir", str(missing)])
    assert r.returncode == 1
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "has no config.json (it does not exist)" in line
    import shlex

    assert f"cmlp model init --out {shlex.quote(str(missing))} --preset tiny" in line, line


def test_every_model_command_hints_the_given_missing_path(tmp_path):
    missing = tmp_path / "no such model"
    import shlex

    hint = f"cmlp model init --out {shlex.quote(str(missing))}"
    for args in (
        ["model", "hashes", "--model-dir", str(missing), "--layers", "0:2"],
        ["manifest", "init", "--model-dir", str(missing), "--splits", "2,2"],
    ):
        r = run(CMLP + args)
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1 and hint in r.stderr, r.stderr


def test_model_bytes_match_what_is_drawn():
    for config in PRESETS.values():
        if config.n_embd > 64:
            continue
        tensors = random_weights(config, attn_bias=False)
        assert model_nbytes(config) == sum(t.nbytes for t in tensors.values())


def test_progress_bar_reaches_its_known_total_when_writing_and_loading(tmp_path):
    """A forced bar (CMLP_PROGRESS=1) ends at 100 % of a stated byte total, on stderr only."""
    out = tmp_path / "m"
    r = run(CMLP + ["model", "init", "--out", str(out), "--preset", "tiny"], CMLP_PROGRESS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)  # stdout stays machine-readable
    assert "writing" in r.stderr and "100%" in r.stderr, r.stderr
    r = run(CMLP + ["model", "hashes", "--model-dir", str(out), "--layers", "0:2"], CMLP_PROGRESS="1")
    assert r.returncode == 0, r.stderr
    assert "loading layers [0, 2)" in r.stderr and "100%" in r.stderr, r.stderr
    assert all(len(line) == 64 for line in r.stdout.split())


def test_quiet_without_a_terminal(tmp_path):
    r = run(CMLP + ["model", "init", "--out", str(tmp_path / "m"), "--preset", "tiny"], CMLP_PROGRESS="")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_progress_switch(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled()
    monkeypatch.delenv(progress.ENV)
    r, w = os.pipe()
    with os.fdopen(w, "w") as stream:
        assert not progress.enabled(stream)
    os.close(r)
