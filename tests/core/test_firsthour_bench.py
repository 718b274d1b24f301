"""scripts/bench.sh says round 0 is a warm-up; the README names the CPU next to every published
benchmark and explains the warm-up round (issue 17, item 7).  No timing is asserted."""

from __future__ import annotations

import random
import re
import subprocess

import pytest

from cmlp.model.synthetic import init_model
from tests.helpers.common import REPO
from tests.helpers.pipeline import cli_env

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("fhb") / "tiny", preset="tiny")


@pytest.mark.slow  # scripts/bench.sh: five pipeline configurations as processes
def test_bench_script_announces_the_warm_up_round(tiny):
    env = cli_env()
    # five configurations on base, base+1000, ... (+ up to 200 ports each), below the
    # ephemeral range (32768+) that outgoing connections and free-port tests use
    env.update(
        CMLP_SKIP_SETUP="1",
        MODEL_DIR=str(tiny),
        THREADS="1",
        BASE_PORT=str(random.randrange(10000, 27000, 100)),
    )
    r = subprocess.run(
        [str(REPO / "scripts" / "bench.sh"), "1", "3"], capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "round 0 is a warm-up" in err and "not counted" in err
    assert "round 0 (warm-up, not counted): 1-stage" in err
    assert "round 1/1: 3-stage relayed" in err
    assert "round 1: " not in err
    assert re.search(r"CPU: .+, \d+ cores", err)  # the lscpu model name
    assert "after one warm-up round that is not counted" in r.stdout
    assert "| p50 vs 1-stage |" in r.stdout


def test_readme_names_the_cpu_next_to_every_benchmark():
    bench = section("Benchmarks")
    # every table in the section follows a bold title paragraph naming the CPU it ran on
    paragraphs = bench.split("\n\n")
    tables = [i for i, p in enumerate(paragraphs) if p.lstrip().startswith("|")]
    assert len(tables) >= 3
    for i in tables:
        title = next(p for p in reversed(paragraphs[:i]) if p.lstrip().startswith("**"))
        assert re.search(r"CPU: [^,)]+\(lscpu\)", title), title
    assert "warm-up" in bench and "round 0" in bench


def test_readme_wheel_path_starts_from_make_wheel():
    """A fresh clone's wheels/ is empty: the README builds the wheel before installing it."""
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "wheels"], capture_output=True, text=True
    ).stdout.split()
    assert not [t for t in tracked if t.endswith(".whl")]
    for line in README.splitlines():
        if "pip install wheels/" in line:
            assert "make wheel" in line, line
