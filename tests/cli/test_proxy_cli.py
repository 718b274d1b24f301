"""`cmlp proxy` start-up: attestation first, listen policy, one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cmlp.cli import proxy_cmd  # noqa: E402
from cmlp.cli.common import run_command  # noqa: E402
from cmlp.cli.main import build_parser  # noqa: E402
from cmlp.errors import PublicKeyMismatch, VerificationFailed  # noqa: E402
from cmlp.proxy.server import ListenPolicyError, check_listen_policy  # noqa: E402
from tests.helpers.common import free_port  # noqa: E402
from tests.helpers.proxy_fake import fake_backend  # noqa: E402


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "error", [VerificationFailed("PCR0 does not match the manifest"), PublicKeyMismatch()]
)
def test_refuses_to_start_when_attestation_does_not_match(error, capsys):
    port = free_port()
    args = build_parser().parse_args(
        ["proxy", "--connect", "127.0.0.1:9", "--manifest", "m.json", "--listen", f"127.0.0.1:{port}"]
    )
    made = []

    def factory(a):
        backend = fake_backend(verify_error=error)
        made.append(backend)
        return backend

    rc = run_command(lambda a: proxy_cmd.run(a, backend_factory=factory), args)
    assert rc == 1
    err = capsys.readouterr().err
    assert str(error) in err and "Traceback" not in err
    assert not _listening(port)  # never bound, never served
    assert made[0].client.closed  # and the client was closed
    assert made[0].client.started == 0  # no prompt was ever sent


@pytest.mark.parametrize(
    "listen,key,allow,ok",
    [
        ("127.0.0.1:8000", None, False, True),
        ("[::1]:8000", None, False, True),
        ("127.0.0.2:8000", None, False, True),
        ("0.0.0.0:8000", None, False, False),
        ("[::]:8000", None, False, False),
        ("192.0.2.7:8000", None, False, False),
        ("0.0.0.0:8000", "k", False, True),
        ("0.0.0.0:8000", None, True, True),
    ],
)
def test_listen_policy(listen, key, allow, ok):
    if ok:
        check_listen_policy(listen, key, allow)
    else:
        with pytest.raises(ListenPolicyError, match="without an API key"):
            check_listen_policy(listen, key, allow)


def _cmlp(*argv, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    env.pop("CMLP_PROXY_API_KEY", None) if not env_extra else None
    return subprocess.run(
        [sys.executable, "-m", "cmlp.cli.main", "proxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_refuses_public_listen_without_key():
    r = _cmlp("--connect", "127.0.0.1:9", "--manifest", "nope.json", "--listen", "0.0.0.0:0")
    assert r.returncode == 1
    assert "without an API key" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1


def test_cli_reports_an_unreachable_pipeline_in_one_line(tmp_path):
    # with a key the policy passes; then either the client is missing (before the
    # host-blind branch is merged) or stage 0 cannot be reached: one line, exit 1.
    r = _cmlp(
        "--connect",
        "127.0.0.1:9",
        "--manifest",
        str(tmp_path / "none.json"),
        "--listen",
        "0.0.0.0:0",
        "--timeout",
        "5",
        env_extra={"CMLP_PROXY_API_KEY": "k"},
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("cmlp")


def test_cli_bad_arguments():
    for argv in (
        ["--manifest", "m"],
        ["--connect", "1.2.3.4:5", "--manifest", "m", "--timeout", "-1"],
        ["--connect", "1.2.3.4:5", "--manifest", "m", "--max-concurrent", "0"],
    ):
        r = _cmlp(*argv)
        assert r.returncode == 2 and "Traceback" not in r.stderr


def test_cli_names_the_extra_when_starlette_is_missing():
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from cmlp.cli.main import main\n"
        "sys.exit(main(['proxy', '--connect', '127.0.0.1:9', '--manifest', 'm.json']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "pip install 'cmlp[proxy]'" in r.stderr and "Traceback" not in r.stderr
