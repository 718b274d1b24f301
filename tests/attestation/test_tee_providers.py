"""Confidential-VM providers against fakes: /dev/sev-guest (extended report ioctl),
the Azure vTPM NV indices + IMDS, and a configfs-tsm tree for TDX.  Each document
produced is then accepted by the matching verifier (test PKIs)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import struct
import uuid

import pytest

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives import serialization

from cmlp.attestation.az_snp import AzSnpVerifier
from cmlp.attestation.az_snp import provider as azp
from cmlp.attestation.snp import SnpVerifier
from cmlp.attestation.snp import provider as sp
from cmlp.attestation.tdx import TdxVerifier, TdxVerifyPolicy
from cmlp.attestation.tdx.provider import ConfigfsOps, TdxProvider
from cmlp.errors import GenerationFailed
from tests.helpers import snp_pki as P
from tests.helpers import tdx_pki as T

PK, NONCE = P.PK, P.NONCE


# --------------------------------------------------------------------------
# /dev/sev-guest
# --------------------------------------------------------------------------
class FakeSevGuest:
    """Implements SNP_GET_EXT_REPORT on the structs the provider passes."""

    def __init__(self, pki, *, need=None, status=0, fail_errno=None, table=None, le=True):
        self.pki, self.need, self.status = pki, need, status
        self.fail_errno, self.table, self.le = fail_errno, table, le
        self.calls, self.closed = [], []

    def opener(self, path, flags):
        assert path == "/dev/fake-sev-guest"
        return 42

    def cert_table(self, base_len):
        guid = (lambda g: uuid.UUID(g).bytes_le) if self.le else (lambda g: uuid.UUID(g).bytes)
        entries = [
            ("c0b406a4-a803-4952-9743-3fb6014cd0ae", self.pki.der("ark")),
            ("4ab7b379-bbac-4fe4-a02f-05aef327c782", self.pki.der("ask")),
            ("92f81bc3-5811-4d3d-97ff-d19f88dc67ea", b"\x30\x00"),  # CRL: skipped
            ("63da758d-e664-4564-adc5-f4b93be8accd", self.pki.der("vek")),
        ]
        head = 24 * (len(entries) + 1)
        table, blobs, off = b"", b"", head
        for g, der in entries:
            table += guid(g) + struct.pack("<II", off, len(der))
            blobs += der
            off += len(der)
        return table + bytes(24) + blobs

    def ioctl(self, fd, request, msg, mutate):
        assert request == sp.SNP_GET_EXT_REPORT and mutate and fd == 42
        version, req_addr, resp_addr, _ = struct.unpack("=B7xQQQ", bytes(msg))
        assert version == 1
        user_data, vmpl, rsvd, certs_addr, certs_len = struct.unpack(
            "=64sI28sQI4x", ctypes.string_at(req_addr, 112)
        )
        self.calls.append((user_data, vmpl, certs_len))
        assert certs_addr % 4096 == 0 and certs_len % 4096 == 0 and rsvd == bytes(28)
        if self.fail_errno:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        table = self.table if self.table is not None else self.cert_table(certs_len)
        if self.need and certs_len < self.need:
            ctypes.memmove(req_addr + 104, struct.pack("<I", self.need), 4)
            msg[24:32] = struct.pack("<Q", 1 << 32)
            raise OSError(errno.ENOSPC, "no space")
        report = P.make_report(self.pki, P.ReportFields(report_data=user_data))
        resp = struct.pack("<II", self.status, len(report)) + bytes(24) + report
        ctypes.memmove(resp_addr, resp, len(resp))
        ctypes.memmove(certs_addr, table, len(table))


@pytest.fixture(scope="module")
def snp_pki():
    return P.make_pki()


def snp_provider(fake):
    transport = sp.SevGuestTransport("/dev/fake-sev-guest", ioctl=fake.ioctl, opener=fake.opener)
    return sp.SnpProvider(transport=transport)


@pytest.mark.parametrize("le", [True, False])
def test_sev_guest_extended_report_verifies(snp_pki, monkeypatch, le):
    fake = FakeSevGuest(snp_pki, le=le)
    monkeypatch.setattr(sp.os, "close", lambda fd: fake.closed.append(fd))
    doc = snp_provider(fake).attest(None, NONCE, PK)
    v = SnpVerifier(trusted_arks=[snp_pki.ark], at_ms=P.T0_MS).verify(doc)
    assert (v.public_key, v.nonce) == (PK, NONCE)
    assert fake.calls == [(PK + NONCE, 0, sp.DEFAULT_CERTS_LEN)] and fake.closed == [42]


def test_sev_guest_retries_with_the_size_the_firmware_asks(snp_pki, monkeypatch):
    fake = FakeSevGuest(snp_pki, need=5 * 4096 + 10)
    monkeypatch.setattr(sp.os, "close", lambda fd: None)
    doc = snp_provider(fake).attest(None, NONCE, PK)
    SnpVerifier(trusted_arks=[snp_pki.ark], at_ms=P.T0_MS).verify(doc)
    assert [c[2] for c in fake.calls] == [4 * 4096, 6 * 4096]
    fake = FakeSevGuest(snp_pki, need=1 << 30)
    with pytest.raises(GenerationFailed, match="certificate buffer"):
        snp_provider(fake).attest(None, NONCE, PK)


@pytest.mark.parametrize(
    "fake_kw,match",
    [
        (dict(fail_errno=errno.EIO), "SNP_GET_EXT_REPORT"),
        (dict(status=0x16), "status"),
        (dict(table=bytes(24)), "no AMD certificates"),
        (dict(table=(b"\x01" * 16 + bytes(8)) * (16384 // 24) + b"\x01" * (16384 % 24)), "terminator"),
        (
            dict(
                table=uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le
                + struct.pack("<II", 100000, 5)
                + bytes(24)
            ),
            "outside",
        ),
    ],
)
def test_sev_guest_failures_are_typed(snp_pki, monkeypatch, fake_kw, match):
    fake = FakeSevGuest(snp_pki, **fake_kw)
    monkeypatch.setattr(sp.os, "close", lambda fd: None)
    with pytest.raises(GenerationFailed, match=match):
        snp_provider(fake).attest(None, NONCE, PK)


def test_sev_guest_missing_device_and_bad_binding():
    provider = sp.SnpProvider("/nonexistent/sev-guest")
    with pytest.raises(GenerationFailed, match="/nonexistent/sev-guest"):
        provider.attest(None, NONCE, PK)
    for pk, nonce in ((b"x" * 31, NONCE), (PK, None), (PK, b"n" * 33)):
        with pytest.raises(GenerationFailed, match="exactly 32 bytes"):
            provider.attest(None, nonce, pk)


# --------------------------------------------------------------------------
# Azure vTPM
# --------------------------------------------------------------------------
class FakeTpm:
    """NV_ReadPublic / NV_DefineSpace / NV_Write / NV_Read over a dict of indices.
    Writing the user-data index makes the HCL report index reflect it (as the
    Azure paravisor does)."""

    def __init__(self, pki, defined=False):
        self.pki = pki
        self.nv = {}
        if defined:
            self.nv[azp.NV_USER_DATA] = bytearray(64)
        self.commands = []

    def _hcl(self, user_data):
        var = json.dumps({"keys": [], "user-data": user_data.hex().upper()}).encode()
        f = P.ReportFields(report_data=hashlib.sha256(var).digest() + bytes(32))
        report = P.make_report(self.pki, f)
        head = b"HCLA" + struct.pack("<IIII", 2, 0x4D4 + len(var), 2, 0) + bytes(12)
        body = head + report + struct.pack("<IIIII", 20 + len(var), 1, 2, 1, len(var)) + var
        return body + bytes(2600 - len(body))

    def __call__(self, cmd):
        tag, size, cc = struct.unpack_from(">HII", cmd, 0)
        assert size == len(cmd)
        self.commands.append(cc)

        def ok(params=b"", sessions=True):
            if sessions:
                body = struct.pack(">I", len(params)) + params + struct.pack(">HBH", 0, 1, 0)
                return struct.pack(">HII", 0x8002, 10 + len(body), 0) + body
            return struct.pack(">HII", 0x8001, 10 + len(params), 0) + params

        def err(rc):
            return struct.pack(">HII", 0x8001, 10, rc)

        if cc == azp.CC_NV_READ_PUBLIC:
            (index,) = struct.unpack_from(">I", cmd, 10)
            if index not in self.nv:
                return err(0x18B)
            public = struct.pack(">IHIH", index, 0xB, 0, 0) + struct.pack(">H", len(self.nv[index]))
            return ok(struct.pack(">H", len(public)) + public + struct.pack(">H", 0), False)
        if cc == azp.CC_NV_DEFINE_SPACE:
            auth_len = struct.unpack_from(">I", cmd, 14)[0]
            p = 18 + auth_len
            (alen,) = struct.unpack_from(">H", cmd, p)
            p += 2 + alen + 2
            index, _, _, plen = struct.unpack_from(">IHIH", cmd, p)
            (dsize,) = struct.unpack_from(">H", cmd, p + 12 + plen)
            self.nv[index] = bytearray(dsize)
            return ok()
        if cc in (azp.CC_NV_WRITE, azp.CC_NV_READ):
            index = struct.unpack_from(">I", cmd, 14)[0]
            auth_len = struct.unpack_from(">I", cmd, 18)[0]
            p = 22 + auth_len
            if cc == azp.CC_NV_WRITE:
                (n,) = struct.unpack_from(">H", cmd, p)
                data = cmd[p + 2 : p + 2 + n]
                self.nv[index][:n] = data
                self.nv[azp.NV_HCL_REPORT] = bytearray(self._hcl(bytes(data)))
                return ok()
            n, off = struct.unpack_from(">HH", cmd, p)
            chunk = bytes(self.nv[index][off : off + n])
            return ok(struct.pack(">H", len(chunk)) + chunk)
        return err(0x143)


def imds_body(pki):
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    return json.dumps({"vcekCert": pem(pki.vek), "certificateChain": pem(pki.ask) + pem(pki.ark)}).encode()


@pytest.mark.parametrize("defined", [False, True])
def test_azure_vtpm_provider_verifies(snp_pki, defined):
    tpm = FakeTpm(snp_pki, defined=defined)
    doc = azp.AzSnpProvider(tpm=tpm, fetch=lambda: imds_body(snp_pki)).attest(None, NONCE, PK)
    v = AzSnpVerifier(trusted_arks=[snp_pki.ark], at_ms=P.T0_MS).verify(doc)
    assert (v.public_key, v.nonce) == (PK, NONCE)
    assert (azp.CC_NV_DEFINE_SPACE in tpm.commands) != defined
    assert tpm.commands.count(azp.CC_NV_READ) == 3  # 2600 bytes in 1024-byte chunks


def test_azure_provider_failures(snp_pki):
    with pytest.raises(GenerationFailed, match="vcekCert"):
        azp.AzSnpProvider(tpm=FakeTpm(snp_pki), fetch=lambda: b"{}").attest(None, NONCE, PK)
    with pytest.raises(GenerationFailed, match="rc 0x143"):
        azp.AzSnpProvider(tpm=lambda cmd: struct.pack(">HII", 0x8001, 10, 0x143), fetch=lambda: b"").attest(
            None, NONCE, PK
        )
    with pytest.raises(GenerationFailed, match="short response"):
        azp.AzSnpProvider(tpm=lambda cmd: b"\x80", fetch=lambda: b"").attest(None, NONCE, PK)
    with pytest.raises(GenerationFailed, match="exactly 32"):
        azp.AzSnpProvider(tpm=FakeTpm(snp_pki)).attest(None, NONCE, b"short")
    with pytest.raises(GenerationFailed, match="vTPM"):
        azp.DeviceTpm("/nonexistent/tpmrm0")(b"x")


# --------------------------------------------------------------------------
# configfs-tsm
# --------------------------------------------------------------------------
class FakeConfigfs(ConfigfsOps):
    """A real directory tree behaving like configfs-tsm: mkdir creates the
    attribute files, writing inblob produces outblob (a quote over it)."""

    def __init__(self, pki, *, provider="tdx_guest", race=False, wrong_data=False):
        self.pki, self.provider, self.race, self.wrong_data = pki, provider, race, wrong_data
        self.entries = []

    def mkdir(self, path):
        os.mkdir(path)
        self.entries.append(path)
        for name, value in (("provider", self.provider + "\n"), ("generation", "0\n")):
            with open(os.path.join(path, name), "w") as f:
                f.write(value)

    def rmdir(self, path):
        shutil.rmtree(path)

    def write(self, path, data):
        super().write(path, data)
        entry = os.path.dirname(path)
        rd = bytes(64) if self.wrong_data else bytes(data)
        quote = T.make_quote(self.pki, T.QuoteFields(reportdata=rd)) + bytes(70)  # padded
        with open(os.path.join(entry, "outblob"), "wb") as f:
            f.write(quote)
        gen = 1
        with open(os.path.join(entry, "generation"), "w") as f:
            f.write(f"{gen}\n")

    def read(self, path, limit):
        out = super().read(path, limit)
        if self.race and path.endswith("outblob"):
            with open(os.path.join(os.path.dirname(path), "generation"), "w") as f:
                f.write("7\n")
        return out


@pytest.fixture(scope="module")
def tdx_pki():
    return T.make_pki()


def test_configfs_tsm_provider_verifies(tdx_pki, tmp_path):
    fs = FakeConfigfs(tdx_pki)
    doc = TdxProvider(str(tmp_path), ops=fs).attest(None, NONCE, PK)
    v = TdxVerifier(collateral=T.collateral(tdx_pki), root_der=T.der(tdx_pki.root), at_ms=T.T0_MS).verify(doc)
    assert (v.public_key, v.nonce) == (PK, NONCE)
    assert fs.entries and not os.listdir(tmp_path)  # the entry was removed
    assert os.path.basename(fs.entries[0]).startswith(f"cmt_{os.getpid()}_")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(provider="sev_guest"), "not tdx_guest"),
        (dict(race=True), "generation"),
        (dict(wrong_data=True), "REPORTDATA"),
    ],
)
def test_configfs_tsm_failures(tdx_pki, tmp_path, kw, match):
    with pytest.raises(GenerationFailed, match=match):
        TdxProvider(str(tmp_path), ops=FakeConfigfs(tdx_pki, **kw)).attest(None, NONCE, PK)
    assert not os.listdir(tmp_path)


def test_configfs_tsm_missing_and_garbage(tdx_pki, tmp_path):
    with pytest.raises(GenerationFailed, match="configfs-tsm"):
        TdxProvider(str(tmp_path / "absent")).attest(None, NONCE, PK)

    class Garbage(FakeConfigfs):
        def write(self, path, data):
            ConfigfsOps.write(self, path, data)
            with open(os.path.join(os.path.dirname(path), "outblob"), "wb") as f:
                f.write(b"\x04\x00\x02\x00garbage")

    with pytest.raises(GenerationFailed, match="unusable quote"):
        TdxProvider(str(tmp_path), ops=Garbage(tdx_pki)).attest(None, NONCE, PK)
    dev = TdxVerifyPolicy.development()
    doc = TdxProvider(str(tmp_path), ops=FakeConfigfs(tdx_pki)).attest(None, NONCE, PK)
    TdxVerifier(dev, root_der=T.der(tdx_pki.root), at_ms=T.T0_MS).verify(doc)


def test_user_data_cannot_be_bound(snp_pki, tdx_pki, tmp_path):
    """REPORT_DATA holds pk || nonce only: user data is refused, never silently dropped."""
    for provider in (
        sp.SnpProvider("/nonexistent"),
        azp.AzSnpProvider(tpm=FakeTpm(snp_pki), fetch=lambda: b""),
        TdxProvider(str(tmp_path), ops=FakeConfigfs(tdx_pki)),
    ):
        with pytest.raises(GenerationFailed, match="user_data cannot be attested"):
            provider.attest(b"role", NONCE, PK)
        # an empty user_data is the same as none
        if isinstance(provider, TdxProvider):
            provider.attest(b"", NONCE, PK)
