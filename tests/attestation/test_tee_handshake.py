"""Mutual attestation over a real handshake with the confidential-VM kinds:
SEV-SNP (fake /dev/sev-guest) and TDX (fake configfs-tsm) providers, their
verifiers on test PKIs, and measurement pinning the way manifests pin stages
(expected_measurements: SNP 0 = MEASUREMENT; TDX 0 = MRTD, 1..4 = RTMR0..3)."""

from __future__ import annotations

import pytest

pytest.importorskip("cryptography")

from cmlp.attestation.base import ExpectedMeasurements
from cmlp.attestation.snp import SnpVerifier
from cmlp.attestation.snp import provider as sp
from cmlp.attestation.tdx import TdxVerifier
from cmlp.attestation.tdx.provider import TdxProvider
from cmlp.errors import HandshakeFailed, VerificationFailed
from cmlp.transport import SessionConfig, sockets
from tests.attestation.test_tee_providers import FakeConfigfs, FakeSevGuest
from tests.helpers import snp_pki as P
from tests.helpers import tdx_pki as T
from tests.helpers.common import run_handshake


def _close(*chs):
    for ch in chs:
        if not isinstance(ch, BaseException) and ch is not None:
            ch.close()


def _pins(hex_map):
    """As a manifest stage's expected_measurements (index -> hex) become pins."""
    return SessionConfig.development(handshake_timeout=5.0).with_measurements(
        ExpectedMeasurements.from_hex(hex_map)
    )


def test_snp_handshake_and_manifest_pins(monkeypatch):
    pki = P.make_pki()
    monkeypatch.setattr(sp.os, "close", lambda fd: None)

    def side(config=None):
        fake = FakeSevGuest(pki)
        transport = sp.SevGuestTransport("/dev/fake-sev-guest", ioctl=fake.ioctl, opener=fake.opener)
        kw = dict(
            provider=sp.SnpProvider(transport=transport),
            verifier=SnpVerifier(trusted_arks=[pki.ark], at_ms=P.T0_MS),
        )
        if config is not None:
            kw["config"] = config
        return kw

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, side(_pins({"0": P.MEASUREMENT.hex()})), side())
    assert not isinstance(init, BaseException), init
    assert not isinstance(resp, BaseException), resp
    init.send(b"hello SNP guest")
    assert resp.recv().payload == b"hello SNP guest"
    _close(init, resp)

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, side(_pins({"0": "ff" * 48})), side())
    assert isinstance(init, (HandshakeFailed, VerificationFailed)) and "measurement[0] mismatch" in str(init)
    _close(init, resp)


def test_tdx_handshake_and_rtmr_pins(tmp_path):
    pki = T.make_pki()
    col = T.collateral(pki)

    def side(sub, config=None):
        root = tmp_path / sub
        root.mkdir(exist_ok=True)
        kw = dict(
            provider=TdxProvider(str(root), ops=FakeConfigfs(pki)),
            verifier=TdxVerifier(collateral=col, root_der=T.der(pki.root), at_ms=T.T0_MS),
        )
        if config is not None:
            kw["config"] = config
        return kw

    a, b = sockets.socketpair()
    pins = {"0": T.MRTD.hex(), "4": T.RTMRS[3].hex()}
    init, resp = run_handshake(a, b, side("i", _pins(pins)), side("r", _pins(pins)))
    assert not isinstance(init, BaseException), init
    assert not isinstance(resp, BaseException), resp
    _close(init, resp)

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, side("i2", _pins({"3": "00" * 48})), side("r2"))
    assert isinstance(init, (HandshakeFailed, VerificationFailed)) and "measurement[3] mismatch" in str(init)
    _close(init, resp)
