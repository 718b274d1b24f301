"""The wheel users pip install: built and repaired by scripts/build_wheel.sh, installed into a
fresh virtual environment outside the source tree, and used from there as a user would:
console scripts, bundled libsodium/OpenBLAS, and a real 2-stage pipeline on a tiny model.

The build is reused when wheels/ already holds one made from the same sources for this
interpreter (build_wheel.sh --reuse compares a source hash), so a CI run pays for it once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_wheel.sh"

EXTENSIONS = ("_frame", "_record", "_netio", "_gpt2", "_llama", "_wkernels")
CONSOLE_SCRIPTS = {
    "cmlp": "cmlp.cli.main:main",
    "cmlp-stage": "cmlp.cli.stage:main",
    "cmlp-orch": "cmlp.cli.orch:main",
    "stage-worker": "cmlp.cli.stage:main",
    "pipeline-orch": "cmlp.cli.orch:main",
}
# Libraries a manylinux wheel may take from the system (everything else must be bundled).
SYSTEM_LIBS = (
    "linux-vdso",
    "ld-linux",
    "libc.so",
    "libm.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
    "libgcc_s.so",
    "libstdc++.so",
    "libutil.so",
)


def source_version() -> str:
    """cmlp.__version__ as written in the source tree (the one place the version lives)."""
    text = (REPO / "cmlp" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "cmlp/__init__.py has no __version__"
    return match.group(1)


def why_no_build() -> str | None:
    if not sys.platform.startswith("linux"):
        return "manylinux wheels are built on Linux only"
    if sys.implementation.name != "cpython":
        return "the wheel is built for CPython"
    if not shutil.which("bash"):
        return "scripts/build_wheel.sh needs bash"
    if not (shutil.which("cc") or shutil.which("gcc")) and not shutil.which("apt-get"):
        return "no C compiler, and no apt-get to install one"
    return None


def clean_env(venv: Path | None = None) -> dict:
    """The environment of a user's shell: no PYTHONPATH into the repo, no other venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
            "PYTHONSTARTUP",
            "PYTHONSAFEPATH",
            "LD_LIBRARY_PATH",
            "LD_PRELOAD",
        )
    }
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def run(cmd, cwd, env, timeout=120, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


# ---------------------------------------------------------------------------
# fixtures: the built wheel and sdist, a venv with the wheel installed
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built():
    """(wheel, sdist) from scripts/build_wheel.sh --reuse, for the interpreter running pytest."""
    reason = why_no_build()
    if reason:
        pytest.skip(reason)
    env = clean_env()
    env["PYTHON"] = sys.executable
    start = time.monotonic()
    proc = run(["bash", BUILD_SCRIPT, "--reuse"], cwd=REPO, env=env, timeout=900)
    print(f"build_wheel.sh --reuse: {time.monotonic() - start:.1f} s\n{proc.stderr}")
    paths = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(paths) == 2, proc.stdout
    wheel, sdist = paths
    assert wheel.suffix == ".whl" and wheel.is_file(), wheel
    assert sdist.name.endswith(".tar.gz") and sdist.is_file(), sdist
    return wheel, sdist


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A working directory outside the source tree."""
    path = tmp_path_factory.mktemp("wheel-user")
    assert not path.resolve().is_relative_to(REPO), f"{path} is inside the repo"
    return path


@pytest.fixture(scope="module")
def venv(built, outside):
    """A fresh venv outside the repo with only the wheel (and its PyPI dependencies)."""
    wheel, _ = built
    path = outside / "venv"
    env = clean_env()
    start = time.monotonic()
    run([sys.executable, "-m", "venv", path], cwd=outside, env=env)
    py = path / "bin" / "python"
    run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
        cwd=outside,
        env=clean_env(path),
        timeout=600,
    )
    print(f"venv + pip install: {time.monotonic() - start:.1f} s")
    return path


@pytest.fixture(scope="module")
def site_packages(venv, outside):
    out = run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=outside,
        env=clean_env(venv),
    ).stdout.strip()
    return Path(out)


# ---------------------------------------------------------------------------
# the files themselves
# ---------------------------------------------------------------------------
def test_wheel_name_tag_and_metadata(built):
    wheel, _ = built
    version = source_version()
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    m = re.fullmatch(rf"cmlp-{re.escape(version)}-{tag}-{tag}-(manylinux_2_\d+_\w+)\.whl", wheel.name)
    assert m, f"unexpected wheel name {wheel.name} (version {version}, {tag}, manylinux)"
    with zipfile.ZipFile(wheel) as zf:
        info = zf.read(f"cmlp-{version}.dist-info/WHEEL").decode()
        meta = zf.read(f"cmlp-{version}.dist-info/METADATA").decode()
    assert f"Tag: {tag}-{tag}-{m.group(1)}" in info
    assert "Root-Is-Purelib: false" in info
    assert f"\nVersion: {version}\n" in meta
    assert "License-Expression: MIT" in meta


def test_wheel_contents(built):
    wheel, _ = built
    version = source_version()
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"cmlp-{version}.dist-info/entry_points.txt").decode()
    for ext in EXTENSIONS:
        assert any(re.fullmatch(rf"cmlp/{ext}\.cpython-[^/]+\.so", n) for n in names), ext
    for data in ("cmlp/data/tokenizer.json", "cmlp/data/aws_nitro_root_g1.pem"):
        assert data in names
    manifests = {p.name for p in (REPO / "cmlp" / "data" / "manifests").glob("*.json")}
    assert manifests
    assert {
        n.rsplit("/", 1)[1] for n in names if n.startswith("cmlp/data/manifests/") and n.endswith(".json")
    } == manifests
    # the licences of cmlp and of everything bundled, in the .dist-info
    licences = {p.relative_to(REPO).as_posix() for p in (REPO / "LICENSES").glob("*")}
    for lic in {"LICENSE"} | licences:
        assert f"cmlp-{version}.dist-info/licenses/{lic}" in names, lic
    for lic in (
        "LICENSES/libsodium-ISC.txt",
        "LICENSES/OpenBLAS-BSD-3-Clause.txt",
        "LICENSES/gpt2-vocabulary-MIT.txt",
    ):
        assert lic in licences
    # console scripts
    section = entry_points.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    declared = dict(line.replace(" ", "").split("=", 1) for line in section.splitlines() if "=" in line)
    assert declared == CONSOLE_SCRIPTS
    # bundled libraries, and nothing of the build tree
    libs = {n.split("/", 1)[1] for n in names if n.startswith("cmlp.libs/") and n != "cmlp.libs/"}
    assert any(n.startswith("libsodium") for n in libs), libs
    assert any(n.startswith(("libopenblas", "libscipy_openblas")) for n in libs), libs
    assert not [n for n in names if n.endswith((".pyx", ".pxd", ".c", ".o"))]


def test_sdist_is_complete(built):
    _, sdist = built
    version = source_version()
    assert sdist.name == f"cmlp-{version}.tar.gz"
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    expected = {
        "setup.py",
        "pyproject.toml",
        "MANIFEST.in",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "PKG-INFO",
        "csrc/gpt2_kernels.c",
        "csrc/gpt2_kernels.h",
        "cmlp/data/tokenizer.json",
        "cmlp/data/aws_nitro_root_g1.pem",
    }
    expected |= {
        p.relative_to(REPO).as_posix()
        for pat in ("pyx/*.pyx", "pyx/*.pxd", "pyx/cmlp/*.pxd", "LICENSES/*", "cmlp/data/manifests/*.json")
        for p in REPO.glob(pat)
    }
    assert not expected - names, sorted(expected - names)
    generated = [n for n in names if re.fullmatch(r"pyx/[^/]+\.c", n) or n.endswith((".so", ".o", ".pyc"))]
    assert not generated, generated


# ---------------------------------------------------------------------------
# the installed wheel, used from outside the repo
# ---------------------------------------------------------------------------
def test_installed_from_the_venv_not_the_repo(venv, outside, site_packages):
    out = run(
        [
            venv / "bin" / "python",
            "-c",
            "import cmlp, cmlp._gpt2, cmlp._llama, cmlp._record, cmlp._frame, cmlp._netio;"
            "print(cmlp.__file__); print(cmlp._gpt2.__file__)",
        ],
        cwd=outside,
        env=clean_env(venv),
    ).stdout.split()
    for path in out:
        assert Path(path).resolve().is_relative_to(site_packages.resolve()), path
    assert site_packages.resolve().is_relative_to(venv.resolve())
    for data in ("tokenizer.json", "aws_nitro_root_g1.pem"):
        assert (site_packages / "cmlp" / "data" / data).is_file()


def test_version_comes_from_one_place(built, venv, outside):
    version = source_version()
    env = clean_env(venv)
    out = run([venv / "bin" / "cmlp", "--version"], cwd=outside, env=env).stdout.strip()
    assert out == f"cmlp {version}"
    out = run(
        [
            venv / "bin" / "python",
            "-c",
            "import cmlp, importlib.metadata as md; print(cmlp.__version__, md.version('cmlp'))",
        ],
        cwd=outside,
        env=env,
    ).stdout.split()
    assert out == [version, version]
    assert built[0].name.startswith(f"cmlp-{version}-")


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_answer_help(venv, outside, script):
    proc = run([venv / "bin" / script, "--help"], cwd=outside, env=clean_env(venv))
    assert proc.stdout.startswith(f"usage: {script}"), proc.stdout[:200]


def ldd(path: Path, env) -> dict[str, str]:
    """soname -> resolved path (or 'not found') for a shared object and its dependencies."""
    out = subprocess.run(
        ["ldd", str(path)], capture_output=True, text=True, env=env, timeout=30, check=True
    ).stdout
    deps = {}
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            name, target = (s.strip() for s in line.split("=>", 1))
            deps[name] = target.split(" (")[0].strip()
        elif line:
            deps[line.split()[0]] = line.split()[0]
    return deps


def test_extensions_resolve_bundled_libraries(site_packages):
    if not shutil.which("ldd"):
        pytest.skip("no ldd on this machine")
    env = clean_env()
    libdir = (site_packages / "cmlp.libs").resolve()
    assert libdir.is_dir()
    sos = sorted((site_packages / "cmlp").glob("*.so"))
    assert sorted(p.name.split(".")[0] for p in sos) == sorted(EXTENSIONS)
    # the scipy-openblas32 wheel's library (a CMLP_BLAS=system build: libopenblas)
    blas = (("libopenblas", "libscipy_openblas"),)
    needs = {"_record": ("libsodium",), "_gpt2": blas, "_llama": blas, "_wkernels": blas}
    for so in sos:
        deps = ldd(so, env)
        missing = [n for n, t in deps.items() if t == "not found"]
        assert not missing, f"{so.name}: unresolved {missing}"
        for name, target in deps.items():
            base = os.path.basename(name)
            if base.startswith(SYSTEM_LIBS):
                continue
            assert Path(target).resolve().is_relative_to(libdir), (
                f"{so.name}: {name} resolves to {target}, not inside the wheel's cmlp.libs/"
            )
        for lib in needs.get(so.name.split(".")[0], ()):
            hits = [t for n, t in deps.items() if os.path.basename(n).startswith(lib)]
            assert hits, f"{so.name} does not link {lib}: {deps}"
            for t in hits:
                assert Path(t).resolve().is_relative_to(libdir), f"{so.name}: {lib} from {t}"


def test_pysodium_loads_the_bundled_libsodium(venv, outside, site_packages):
    # cmlp.transport.sodium is what imports pysodium in cmlp (it redirects the library lookup)
    code = (
        "from cmlp.transport import sodium\n"
        "import cmlp._record\n"
        "print(sodium.LIBRARY_PATH)\n"
        "maps = open('/proc/self/maps').read().split()\n"
        "print(sorted({p for p in maps if '/libsodium' in p}))\n"
        "assert len(sodium.sha256(b'abc')) == 32\n"
    )
    lines = run([venv / "bin" / "python", "-c", code], cwd=outside, env=clean_env(venv)).stdout.splitlines()
    libdir = (site_packages / "cmlp.libs").resolve()
    lib = Path(lines[0]).resolve()
    assert lib.is_relative_to(libdir) and lib.name.startswith("libsodium"), lines[0]
    assert lib.is_relative_to(venv.resolve())
    # the record layer and pysodium share that one copy: no system libsodium is mapped
    mapped = [Path(p).resolve() for p in eval(lines[1])]  # noqa: S307 - our own repr
    assert mapped and all(p == lib for p in mapped), mapped


# ---------------------------------------------------------------------------
# a real 2-stage pipeline with the installed console scripts
# ---------------------------------------------------------------------------
def listening_ports() -> set[int]:
    """Ports in LISTEN state, read passively (no stray connection reaches the stages)."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_two_stage_pipeline_from_the_installed_scripts(venv, outside):
    from tests.helpers.pipeline import manifest_dict

    env = clean_env(venv)
    bindir = venv / "bin"
    work = outside / "pipeline"
    work.mkdir()
    model = work / "tiny-model"
    run([bindir / "cmlp", "model", "init", "--out", model, "--preset", "tiny"], cwd=work, env=env)
    config = json.loads((model / "config.json").read_text())
    assert config["n_layer"] == 4
    doc = manifest_dict(
        2,
        total_layers=config["n_layer"],
        splits=[(0, 2), (2, 4)],
        hidden_dim=config["n_embd"],
        max_seq_len=64,
    )
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps(doc, indent=2))
    want = {
        int(s["endpoint"][k]["addr"].rsplit(":", 1)[1]) for s in doc["stages"] for k in ("control", "data_in")
    }

    procs, logs = [], []
    try:
        for idx in range(2):
            log = open(work / f"stage{idx}.log", "w+")  # noqa: SIM115 - closed in `finally` below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [
                        str(bindir / "cmlp-stage"),
                        "--manifest",
                        str(manifest),
                        "--stage-idx",
                        str(idx),
                        "--model-dir",
                        str(model),
                        "--threads",
                        "1",
                        "--log-level",
                        "warning",
                    ],
                    cwd=work,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while not want <= listening_ports():
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"a stage exited early: {dead}\n" + "\n".join(
                Path(f.name).read_text() for f in logs
            )
            assert time.monotonic() < deadline, f"stages not listening on {want}"
            time.sleep(0.05)

        prompt = "The capital of France is"
        orch = run(
            [bindir / "cmlp-orch", "--manifest", manifest, "--text", prompt, "--max-tokens", "5"],
            cwd=work,
            env=env,
            timeout=120,
        )
        assert orch.stdout.startswith(prompt), orch.stdout
        assert orch.stdout.endswith("\n") and len(orch.stdout.rstrip("\n")) > len(prompt), (
            f"nothing generated: {orch.stdout!r}"
        )
        generated = re.search(r"Tokens generated: (\d+)", orch.stderr)
        assert generated and int(generated.group(1)) == 5, orch.stderr
        for p in procs:
            assert p.wait(timeout=30) == 0, Path(logs[procs.index(p)].name).read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
