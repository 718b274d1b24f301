"""libsodium for the Python-level handshake, through pysodium.

The compiled record layer links libsodium directly.  pysodium finds its
library with ``ctypes.util.find_library``, which only sees system copies; in
an installed wheel, auditwheel ships libsodium inside ``cmlp.libs/``, so we
point pysodium at that copy first.  Both layers then use one library and a
machine needs no system libsodium at all.
"""

from __future__ import annotations

import ctypes.util
import hmac
from pathlib import Path

from cmlp.errors import NonContributoryKey


def _bundled_libsodium():
    libs = Path(__file__).resolve().parents[2] / "cmlp.libs"
    found = sorted(libs.glob("libsodium*.so*")) if libs.is_dir() else []
    return str(found[0]) if found else None


def _import_pysodium():
    bundled = _bundled_libsodium()
    if bundled is None:
        import pysodium

        return pysodium
    original = ctypes.util.find_library
    ctypes.util.find_library = lambda name: bundled if name in ("sodium", "libsodium") else original(name)
    try:
        import pysodium
    finally:
        ctypes.util.find_library = original
    return pysodium


pysodium = _import_pysodium()
LIBRARY_PATH = pysodium.sodium._name


def random_bytes(n: int) -> bytes:
    return pysodium.randombytes(n)


def x25519_keypair(secret: bytes | None = None):
    """(secret, public); the secret is 32 random bytes, clamped inside X25519."""
    sk = secret if secret is not None else random_bytes(32)
    return sk, pysodium.crypto_scalarmult_curve25519_base(sk)


def x25519(secret: bytes, peer_public: bytes) -> bytes:
    """Shared secret; NonContributoryKey for low-order peer keys (all-zero output)."""
    try:
        shared = pysodium.crypto_scalarmult_curve25519(secret, peer_public)
    except ValueError:
        raise NonContributoryKey() from None  # libsodium returns -1 for an all-zero result
    if not any(shared):
        raise NonContributoryKey()
    return shared


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return pysodium.crypto_auth_hmacsha256(msg, key)


def sha256(data: bytes) -> bytes:
    return pysodium.crypto_hash_sha256(data)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (hmac.compare_digest)."""
    return hmac.compare_digest(a, b)
