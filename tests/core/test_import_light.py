"""Modules that need no compiled extension import without them (issue 16).

``cmlp.manifest`` (and the address parsing under it) is used by deployment scripts and
`cmlp manifest` on machines where the Cython extensions may not be built yet.
"""

import subprocess
import sys
from pathlib import Path

from tests.helpers.common import REPO, cli_env

BLOCK_EXTENSIONS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("cmlp._frame", "cmlp._record", "cmlp._netio", "cmlp._gpt2"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_EXTENSIONS + code],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=str(REPO),
        timeout=60,
    )


def test_the_blocker_really_blocks():
    r = run_blocked("import cmlp.transport.wire")
    assert r.returncode != 0 and "blocked cmlp._frame" in r.stderr


def test_manifest_loads_without_the_compiled_extensions():
    shipped = sorted((Path(REPO) / "cmlp" / "data" / "manifests").glob("*.json"))
    assert shipped
    r = run_blocked(f"""
from cmlp.manifest import Manifest
from cmlp.transport.sockets import parse_endpoint
m = Manifest.load({str(shipped[0])!r})
print(m.num_stages, parse_endpoint("vsock:16:5000"))
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == "vsock:16:5000"


def test_transport_names_still_resolve_lazily():
    from cmlp import transport
    from cmlp.transport.channel import SecureChannel
    from cmlp.transport.config import RetryPolicy

    assert transport.SecureChannel is SecureChannel and transport.RetryPolicy is RetryPolicy
    assert "SecureChannel" in dir(transport)
    try:
        transport.NoSuchName  # noqa: B018 - the attribute access is the test
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("unknown names must raise AttributeError")
