"""`cmlp manifest list/show/copy/init` and the generator in cmlp/manifest_gen.py (issue 17, item 4).

Generated manifests are checked with the project's Manifest loader, against the packaged
examples' port plans, against `cmlp model hashes`, and by running real stage and
orchestrator processes from them.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from cmlp.cli.main import main
from cmlp.errors import ManifestError
from cmlp.manifest import Manifest
from cmlp.manifest_gen import LAYOUTS, generate, parse_splits, stage_bounds
from cmlp.model.config import Gpt2Config
from cmlp.model.synthetic import init_model, write_model
from tests.helpers.common import REPO
from tests.helpers.pipeline import cli_env, run_orch_process, start_stage_process, stop_processes

CMLP = [sys.executable, "-m", "cmlp.cli.main"]


def cmlp(*args):
    return subprocess.run(CMLP + list(args), capture_output=True, text=True, env=cli_env(), timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("fhm") / "tiny", preset="tiny")


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    """12 layers like GPT-2 small, tiny widths: the packaged examples' splits apply."""
    config = Gpt2Config(vocab_size=300, n_positions=1024, n_embd=16, n_layer=12, n_head=2, synthetic=True)
    return write_model(tmp_path_factory.mktemp("fhm") / "twelve", config, seed=1, attn_bias=False)


# --- packaged examples --------------------------------------------------------
def test_list_names_every_packaged_example_and_the_tiny_preset():
    r = cmlp("manifest", "list")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    shipped = sorted(
        p.name[len("manifest_") : -len(".json")]
        for p in (REPO / "cmlp" / "data" / "manifests").glob("manifest_*.json")
    )
    assert names == shipped and "2stage_tiny" in names
    tiny_line = next(line for line in r.stdout.splitlines() if line.startswith("2stage_tiny"))
    assert "layers 0-2, 2-4" in tiny_line and "hidden 64" in tiny_line


def test_show_prints_the_file_and_accepts_every_spelling():
    want = (REPO / "cmlp" / "data" / "manifests" / "manifest_2stage_tiny.json").read_text()
    for name in ("2stage_tiny", "manifest_2stage_tiny", "manifest_2stage_tiny.json"):
        r = cmlp("manifest", "show", name)
        assert r.returncode == 0 and r.stdout == want
    Manifest.from_json(want)


def test_unknown_name_is_one_line_listing_what_exists():
    r = cmlp("manifest", "show", "4stage")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "no packaged manifest '4stage'" in r.stderr and "2stage_tiny" in r.stderr


def test_copy_to_a_file_or_directory_and_never_overwrite(tmp_path):
    r = cmlp("manifest", "copy", "2stage", str(tmp_path / "m.json"))
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "m.json")
    assert Manifest.load(tmp_path / "m.json").num_stages == 2
    r = cmlp("manifest", "copy", "3stage_relay", str(tmp_path))
    assert r.returncode == 0
    assert Manifest.load(tmp_path / "manifest_3stage_relay.json").relayed_links() == [0, 1]
    r = cmlp("manifest", "copy", "2stage", str(tmp_path / "m.json"))  # the same: fine
    assert r.returncode == 0 and "already is the packaged" in r.stderr
    r = cmlp("manifest", "copy", "3stage", str(tmp_path / "m.json"))
    assert r.returncode == 1 and "already exists" in r.stderr
    assert Manifest.load(tmp_path / "m.json").num_stages == 2
    assert main(["manifest", "copy", "3stage", str(tmp_path / "m.json"), "--force"]) == 0
    assert Manifest.load(tmp_path / "m.json").num_stages == 3


@pytest.mark.parametrize("tool", ["cmlp.cli.stage", "cmlp.cli.orch"])
def test_a_missing_packaged_name_says_how_to_get_it(tmp_path, tool):
    """After `pip install` of the wheel there is no manifests/ folder: say where they are."""
    extra = ["--stage-idx", "0"] if tool.endswith("stage") else ["--text", "hi"]
    r = subprocess.run(
        [sys.executable, "-m", tool, "--manifest", "manifest_2stage.json", *extra],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 1
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.count("manifest error") == 1, line
    assert "file not found" in line
    assert "cmlp manifest copy 2stage manifest_2stage.json" in line
    r = subprocess.run(
        [sys.executable, "-m", tool, "--manifest", "mine.json", *extra],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert "file not found" in r.stderr and "packaged" not in r.stderr


# --- the generator --------------------------------------------------------------
@pytest.mark.parametrize(
    "name,splits,layout",
    [
        ("1stage", "12", "direct"),
        ("2stage", "6,6", "direct"),
        ("3stage", "4,4,4", "direct"),
        ("2stage_relay", "6,6", "relay"),
        ("3stage_relay", "4,4,4", "relay"),
        ("1stage_vsock", "12", "vsock"),
        ("2stage_vsock", "6,6", "vsock"),
        ("3stage_vsock", "4,4,4", "vsock"),
    ],
)
def test_generated_layouts_match_the_packaged_examples(twelve, name, splits, layout):
    want = Manifest.load(REPO / "manifests" / f"manifest_{name}.json")
    got = generate(
        twelve,
        parse_splits(splits),
        layout=layout,
        base_port=5000 if layout == "vsock" else 9000,
        with_hashes=False,
    )
    assert [(s.layer_start, s.layer_end, s.endpoint) for s in got.stages] == [
        (s.layer_start, s.layer_end, s.endpoint) for s in want.stages
    ]
    assert got.relayed_links() == want.relayed_links()


def test_cli_init_fills_the_hashes_cmlp_model_hashes_prints(tiny, tmp_path):
    out = tmp_path / "gen.json"
    r = cmlp(
        "manifest",
        "init",
        "--model-dir",
        str(tiny),
        "--splits",
        "1,3",
        "--relay",
        "--base-port",
        "12000",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    m = Manifest.load(out)  # the project's own loader and checks
    assert [(s.layer_start, s.layer_end) for s in m.stages] == [(0, 1), (1, 4)]
    assert m.activation_spec.hidden_dim == 64 and m.total_layers == 4
    assert m.relayed_links() == [0]
    assert str(m.stages[0].endpoint.control.endpoint) == "127.0.0.1:12000"
    for s in m.stages:
        assert s.require_weight_hashes
        printed = cmlp(
            "model", "hashes", "--model-dir", str(tiny), "--layers", f"{s.layer_start}:{s.layer_end}"
        )
        assert printed.returncode == 0
        assert s.weight_hashes == printed.stdout.split()
    r = cmlp("manifest", "init", "--model-dir", str(tiny), "--splits", "2,2", "--out", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr


def test_cli_init_to_stdout_and_vsock(tiny):
    r = cmlp("manifest", "init", "--model-dir", str(tiny), "--splits", "2,2", "--vsock")
    assert r.returncode == 0, r.stderr
    m = Manifest.from_json(r.stdout)
    ports = [(s.endpoint.control.endpoint.port, s.endpoint.data_out.endpoint.port) for s in m.stages]
    assert ports == [(5000, 6001), (5000, 5002)]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--splits", "2,3"], "covers 5 layers but the model has 4"),
        (["--splits", "2,x"], "layer counts per stage"),
        (["--splits", "4,0"], "positive layer counts"),
        (["--splits", "2,2", "--base-port", "65530"], "out of range"),
        (["--splits", "2,2", "--relay", "--vsock"], "not allowed with"),
    ],
)
def test_bad_generator_input_is_one_line(tiny, args, fragment):
    r = cmlp("manifest", "init", "--model-dir", str(tiny), *args)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr


def test_missing_model_dir(tmp_path):
    r = cmlp("manifest", "init", "--model-dir", str(tmp_path / "none"), "--splits", "2,2")
    assert r.returncode == 1 and "has no config.json (it does not exist)" in r.stderr


def test_every_layout_is_registered_for_the_cli():
    assert set(LAYOUTS) >= {"direct", "relay", "vsock"}
    with pytest.raises(ManifestError, match="covers 3 layers"):
        stage_bounds([1, 2], 4)


def _run_pipeline(manifest_path, model_dir, n, text="The capital of France is"):
    procs = [start_stage_process(manifest_path, i, model_dir) for i in range(n)]
    try:
        r = run_orch_process(manifest_path, text, max_tokens=4)
        for p in procs:  # stages exit on their own after the Shutdown
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass
    finally:
        stop_processes(procs)
    return r, procs


@pytest.mark.fast_cases("relay")
@pytest.mark.parametrize("layout", ["direct", "relay"])
def test_a_pipeline_runs_from_a_generated_manifest(tiny, tmp_path, layout):
    base = random.randrange(10000, 32000, 100)  # below the ephemeral port range
    path = tmp_path / "gen.json"
    path.write_text(generate(tiny, [1, 2, 1], layout=layout, base_port=base).dumps())
    r, procs = _run_pipeline(path, tiny, 3)
    assert r.returncode == 0, r.stderr + "".join(p.stderr.read() for p in procs)
    assert r.stdout.startswith("The capital of France is") and len(r.stdout) > 25
    assert [p.returncode for p in procs] == [0, 0, 0]


def test_generated_hashes_refuse_other_weights(tiny, tmp_path):
    other = init_model(tmp_path / "other", preset="tiny", seed=9)
    path = tmp_path / "gen.json"
    base = random.randrange(10000, 32000, 100)
    path.write_text(generate(tiny, [2, 2], base_port=base).dumps())
    r, procs = _run_pipeline(path, other, 2)
    assert r.returncode != 0
    assert "weight hash mismatch" in r.stderr, r.stderr
    doc = json.loads(path.read_text())
    assert all(s["require_weight_hashes"] for s in doc["stages"])


def test_an_extra_option_is_one_function_and_gets_a_flag(tiny, monkeypatch):
    """The seam a host-blind mode plugs into: a function in EXTRAS edits the JSON, then the
    loader validates the result; the CLI offers --<name>."""
    from cmlp import manifest_gen

    def short_seq(doc, layout, base_port, host):
        """Test option: a shorter max_seq_len."""
        assert layout == "relay" and base_port == 12000
        doc["activation_spec"]["max_seq_len"] = 256

    def break_it(doc, layout, base_port, host):
        doc["stages"][0]["layer_start"] = 1

    monkeypatch.setitem(manifest_gen.EXTRAS, "short-seq", short_seq)
    monkeypatch.setitem(manifest_gen.EXTRAS, "broken", break_it)
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert (
            main(
                [
                    "manifest",
                    "init",
                    "--model-dir",
                    str(tiny),
                    "--splits",
                    "2,2",
                    "--relay",
                    "--base-port",
                    "12000",
                    "--short-seq",
                ]
            )
            == 0
        )
    assert Manifest.from_json(buf.getvalue()).activation_spec.max_seq_len == 256
    with pytest.raises(ManifestError, match="layer_start must be 0"):
        generate(tiny, [2, 2], extras=["broken"], with_hashes=False)
    with pytest.raises(ManifestError, match="unknown option 'nope'"):
        generate(tiny, [2, 2], extras=["nope"])
