"""NitroProvider: NSM request encoding, the ioctl struct, response decoding (no device)."""

import ctypes
import errno
import os
import struct

import pytest

cbor2 = pytest.importorskip("cbor2")

from cmlp.attestation import nsm
from cmlp.attestation.nsm import (
    NSM_IOCTL_RAW,
    IoctlTransport,
    NitroProvider,
    decode_attestation_response,
    encode_attestation_request,
)
from cmlp.errors import AttestError, GenerationFailed

PK = bytes(range(32))
NONCE = bytes(range(32, 64))
DOC = b"\x84" + b"fake cose document" * 10


def test_ioctl_number_matches_the_linux_uapi():
    # _IOWR(0x0A, 0, struct nsm_raw) with sizeof(struct nsm_raw) == 32
    assert NSM_IOCTL_RAW == 0xC0200A00
    assert nsm.NSM_REQUEST_MAX_SIZE == 0x1000
    assert nsm.NSM_RESPONSE_MAX_SIZE == 0x3000


# --------------------------------------------------------------------------
# request encoding
# --------------------------------------------------------------------------
def test_request_encoding_is_the_serde_shape():
    req = encode_attestation_request(None, NONCE, PK)
    assert cbor2.loads(req) == {"Attestation": {"user_data": None, "nonce": NONCE, "public_key": PK}}
    # Field order of nsm_io::Request::Attestation, byte strings as CBOR bstr.
    assert req == (
        b"\xa1\x6bAttestation\xa3\x69user_data\xf6\x65nonce\x58\x20" + NONCE + b"\x6apublic_key\x58\x20" + PK
    )


def test_request_accepts_bytes_likes():
    req = encode_attestation_request(bytearray(b"u"), memoryview(NONCE), PK)
    assert cbor2.loads(req)["Attestation"]["user_data"] == b"u"


@pytest.mark.parametrize(
    "kw",
    [dict(user_data=b"x" * 1025), dict(nonce=b"x" * 1025), dict(public_key=b"x" * 1025), dict(nonce="text")],
)
def test_request_field_limits(kw):
    args = {"user_data": None, "nonce": None, "public_key": None}
    args.update(kw)
    with pytest.raises(GenerationFailed):
        encode_attestation_request(**args)


def test_request_of_three_max_fields_fits():
    req = encode_attestation_request(b"a" * 1024, b"b" * 1024, b"c" * 1024)
    assert len(req) <= nsm.NSM_REQUEST_MAX_SIZE


# --------------------------------------------------------------------------
# response decoding
# --------------------------------------------------------------------------
def test_response_document():
    assert decode_attestation_response(cbor2.dumps({"Attestation": {"document": DOC}})) == DOC


@pytest.mark.parametrize(
    "response, fragment",
    [
        (cbor2.dumps({"Error": "InvalidArgument"}), "InvalidArgument"),
        (cbor2.dumps({"Error": "InternalError"}), "InternalError"),
        (cbor2.dumps({"GetRandom": {"random": b"x"}}), "unexpected"),
        (cbor2.dumps({"Attestation": {"document": "text"}}), "no document"),
        (cbor2.dumps({"Attestation": {}}), "no document"),
        (cbor2.dumps({"Attestation": {"document": b""}}), "empty"),
        (cbor2.dumps({"Attestation": {"document": DOC}, "Error": "x"}), "single-entry"),
        (cbor2.dumps(["Attestation"]), "single-entry"),
        (b"", "not valid CBOR"),
        (cbor2.dumps({"Attestation": {"document": DOC}}) + b"\x00", "not valid CBOR"),
        (b"\xa1" * 5000, "not valid CBOR"),
    ],
)
def test_response_errors(response, fragment):
    with pytest.raises(GenerationFailed, match=fragment):
        decode_attestation_response(response)


# --------------------------------------------------------------------------
# provider over an injected transport
# --------------------------------------------------------------------------
def test_provider_round_trip_through_a_fake_transport():
    seen = []

    def transport(request):
        seen.append(cbor2.loads(request))
        return cbor2.dumps({"Attestation": {"document": DOC}})

    provider = NitroProvider(transport=transport)
    assert provider.attest(None, NONCE, PK) == DOC
    assert seen == [{"Attestation": {"user_data": None, "nonce": NONCE, "public_key": PK}}]


def test_provider_surfaces_nsm_errors():
    provider = NitroProvider(transport=lambda req: cbor2.dumps({"Error": "InvalidArgument"}))
    with pytest.raises(GenerationFailed, match="InvalidArgument"):
        provider.attest(None, NONCE, PK)


def test_absent_device_mentions_dev_nsm():
    if os.path.exists("/dev/nsm"):
        pytest.skip("running inside a Nitro enclave")
    with pytest.raises(GenerationFailed, match="/dev/nsm"):
        NitroProvider().attest(None, NONCE, PK)


def test_absent_custom_device_is_named(tmp_path):
    path = str(tmp_path / "nsm")
    with pytest.raises(GenerationFailed, match=path):
        NitroProvider(device=path).attest(None, NONCE, PK)


def test_unopenable_device(tmp_path):
    def opener(path, flags):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(GenerationFailed, match="Permission denied"):
        IoctlTransport(str(tmp_path / "nsm"), opener=opener, ioctl=lambda *a: 0)(b"\xa0")


# --------------------------------------------------------------------------
# the ioctl struct, against a fake driver
# --------------------------------------------------------------------------
class FakeNsmDriver:
    """Plays the kernel: reads the request through the iovec, writes a response."""

    def __init__(self, respond, fail_errno=None, claim_len=None):
        self.respond = respond
        self.fail_errno = fail_errno
        self.claim_len = claim_len
        self.calls = []
        self.closed = []

    def open(self, path, flags):
        assert flags & os.O_RDWR
        self.path = path
        return 1234

    def ioctl(self, fd, request, arg, mutate):
        assert fd == 1234 and request == NSM_IOCTL_RAW and mutate is True
        assert isinstance(arg, bytearray) and len(arg) == 32
        req_addr, req_len, resp_addr, resp_cap = struct.unpack("=QQQQ", arg)
        request_bytes = ctypes.string_at(req_addr, req_len)
        self.calls.append((request_bytes, resp_cap))
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        response = self.respond(request_bytes)
        assert len(response) <= resp_cap
        ctypes.memmove(resp_addr, response, len(response))
        arg[24:32] = struct.pack("=Q", self.claim_len if self.claim_len is not None else len(response))
        return 0


def fake_transport(driver, monkeypatch):
    monkeypatch.setattr(nsm.os, "close", lambda fd: driver.closed.append(fd))
    return IoctlTransport("/dev/nsm", ioctl=driver.ioctl, opener=driver.open)


def test_ioctl_transport_passes_request_and_reads_response_length(monkeypatch):
    response = cbor2.dumps({"Attestation": {"document": b"d" * 5000}})
    driver = FakeNsmDriver(lambda req: response)
    provider = NitroProvider(transport=fake_transport(driver, monkeypatch))
    assert provider.attest(b"user", NONCE, PK) == b"d" * 5000
    ((request, capacity),) = driver.calls
    assert capacity == 0x3000
    assert cbor2.loads(request) == {"Attestation": {"user_data": b"user", "nonce": NONCE, "public_key": PK}}
    assert driver.closed == [1234]


def test_ioctl_failure_closes_the_device_and_is_typed(monkeypatch):
    driver = FakeNsmDriver(lambda req: b"", fail_errno=errno.EIO)
    with pytest.raises(GenerationFailed, match="ioctl"):
        NitroProvider(transport=fake_transport(driver, monkeypatch)).attest(None, NONCE, PK)
    assert driver.closed == [1234]


def test_ioctl_emsgsize(monkeypatch):
    driver = FakeNsmDriver(lambda req: b"", fail_errno=errno.EMSGSIZE)
    with pytest.raises(GenerationFailed, match="too large"):
        NitroProvider(transport=fake_transport(driver, monkeypatch)).attest(None, NONCE, PK)


def test_driver_claiming_an_oversized_response(monkeypatch):
    driver = FakeNsmDriver(lambda req: b"\xa0", claim_len=0x3001)
    with pytest.raises(GenerationFailed, match="response"):
        NitroProvider(transport=fake_transport(driver, monkeypatch)).attest(None, NONCE, PK)


def test_transport_rejects_oversized_request(monkeypatch):
    driver = FakeNsmDriver(lambda req: b"")
    with pytest.raises(GenerationFailed, match="request"):
        fake_transport(driver, monkeypatch)(b"x" * 0x1001)
    assert driver.calls == []


def test_provider_document_verifies_with_nitro_verifier():
    """End to end: a fake NSM that signs with the test PKI feeds the real verifier."""
    pytest.importorskip("cryptography")
    from cmlp.attestation.nitro import NitroVerifier
    from tests.helpers import nitro_pki as P

    pki = P.make_pki()

    def fake_nsm(request):
        fields = cbor2.loads(request)["Attestation"]
        doc = P.make_document(
            pki, user_data=fields["user_data"], nonce=fields["nonce"], public_key=fields["public_key"]
        )
        return cbor2.dumps({"Attestation": {"document": doc}})

    doc = NitroProvider(transport=fake_nsm).attest(None, NONCE, PK)
    verifier = NitroVerifier(root_pem=pki.root_pem, at_ms=P.T0_MS)
    v = verifier.verify_with_binding(doc, PK, NONCE)
    assert v.user_data is None


def test_all_provider_failures_are_attest_errors():
    for transport in (lambda r: b"", lambda r: b"\xff", lambda r: cbor2.dumps({"Error": 3})):
        with pytest.raises(AttestError):
            NitroProvider(transport=transport).attest(None, NONCE, PK)


def test_secure_channel_handshake_with_nitro_attestation():
    """Mutual attestation over a real handshake: fake NSMs, test PKI, NitroVerifier."""
    pytest.importorskip("cryptography")
    from cmlp.attestation.nitro import NitroVerifier
    from cmlp.errors import HandshakeFailed
    from cmlp.transport import sockets
    from tests.helpers import nitro_pki as P
    from tests.helpers.common import run_handshake

    pki = P.make_pki()

    def fake_nsm(request):
        fields = cbor2.loads(request)["Attestation"]
        assert fields["user_data"] is None and len(fields["nonce"]) == 32
        doc = P.make_document(pki, user_data=None, nonce=fields["nonce"], public_key=fields["public_key"])
        return cbor2.dumps({"Attestation": {"document": doc}})

    def side(pins=None):
        return dict(
            provider=NitroProvider(transport=fake_nsm),
            verifier=NitroVerifier(pins, root_pem=pki.root_pem, at_ms=P.T0_MS),
        )

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, side({0: bytes(48)}), side())
    assert not isinstance(init, BaseException), init
    assert not isinstance(resp, BaseException), resp
    init.send(b"hello enclave")
    assert resp.recv().payload == b"hello enclave"
    init.close()
    resp.close()

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, side({0: b"\xff" * 48}), side())
    assert isinstance(init, HandshakeFailed)
    assert "PCR0 mismatch" in str(init)
    for ch in (init, resp):
        if not isinstance(ch, BaseException):
            ch.close()
