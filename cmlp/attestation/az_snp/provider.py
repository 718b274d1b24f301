"""Azure SEV-SNP provider: the HCL report through the vTPM NV indices
(transport.md 5.7) and the VCEK chain from the Azure instance metadata
service (IMDS, THIM).

* write pk || nonce (64 bytes) to NV index 0x01400002 (defined by us when
  missing: 64 bytes, owner read/write);
* read the HCL report from NV index 0x01400001 (NV_ReadPublic for its size,
  then NV_Read in chunks);
* GET http://169.254.169.254/metadata/THIM/amd/certification with header
  ``Metadata: true`` -> JSON ``vcekCert`` + ``certificateChain`` (PEM).

TPM 2.0 commands are marshalled here (TPM 2.0 Library, Part 3): NV_ReadPublic
(0x169), NV_DefineSpace (0x12A), NV_Write (0x137), NV_Read (0x14E), each with
an empty-password session (TPM_RS_PW) on owner authorisation.  The TPM is
reached through ``/dev/tpmrm0`` (write the command, read the response);
``tpm`` and ``fetch`` are injectable for tests.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Optional

from cmlp.attestation.az_snp.document import encode_document
from cmlp.attestation.az_snp.hcl import MAX_HCL_SIZE
from cmlp.attestation.snp.provider import binding_report_data
from cmlp.errors import GenerationFailed

NV_HCL_REPORT = 0x01400001
NV_USER_DATA = 0x01400002
TPM_RH_OWNER = 0x40000001
TPM_RS_PW = 0x40000009
TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS = 0x8001, 0x8002
CC_NV_DEFINE_SPACE, CC_NV_WRITE, CC_NV_READ, CC_NV_READ_PUBLIC = 0x12A, 0x137, 0x14E, 0x169
TPM_ALG_SHA256 = 0x000B
# TPMA_NV: OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD | NO_DA
NV_ATTRIBUTES = (1 << 1) | (1 << 2) | (1 << 17) | (1 << 18) | (1 << 25)
CHUNK = 1024
TPM_DEVICE = "/dev/tpmrm0"
IMDS_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
MAX_RESPONSE = 8192


def is_handle_error(rc: int) -> bool:
    """TPM_RC_HANDLE (format-one error 0x0B), whatever handle number it names."""
    return bool(rc & 0x80) and rc & 0x3F == 0x0B


def _pw_session() -> bytes:
    # sessionHandle, nonce (size 0), sessionAttributes (continueSession), hmac (size 0)
    body = struct.pack(">IHBH", TPM_RS_PW, 0, 1, 0)
    return struct.pack(">I", len(body)) + body


def command(cc: int, handles: bytes, params: bytes, sessions: bool) -> bytes:
    tag = TPM_ST_SESSIONS if sessions else TPM_ST_NO_SESSIONS
    body = handles + (_pw_session() if sessions else b"") + params
    return struct.pack(">HII", tag, 10 + len(body), cc) + body


class TpmError(GenerationFailed):
    def __init__(self, rc: int, what: str):
        self.rc = rc
        super().__init__(f"TPM {what} failed with rc {rc:#x}")


def _call(tpm, cc: int, handles: bytes, params: bytes, sessions: bool, what: str) -> bytes:
    resp = tpm(command(cc, handles, params, sessions))
    if len(resp) < 10:
        raise GenerationFailed(f"TPM {what}: short response")
    tag, size, rc = struct.unpack_from(">HII", resp, 0)
    if size != len(resp):
        raise GenerationFailed(f"TPM {what}: response size {size} != {len(resp)}")
    if rc != 0:
        raise TpmError(rc, what)
    body = resp[10:]
    if tag == TPM_ST_SESSIONS:  # parameterSize u32, parameters, session area
        if len(body) < 4:
            raise GenerationFailed(f"TPM {what}: short response")
        (psize,) = struct.unpack_from(">I", body, 0)
        if psize > len(body) - 4:
            raise GenerationFailed(f"TPM {what}: bad parameter size")
        return body[4 : 4 + psize]
    return body


def nv_size(tpm, index: int) -> int:
    out = _call(tpm, CC_NV_READ_PUBLIC, struct.pack(">I", index), b"", False, "NV_ReadPublic")
    # TPM2B_NV_PUBLIC: size u16, nvIndex u32, nameAlg u16, attributes u32,
    # authPolicy TPM2B, dataSize u16
    if len(out) < 14:
        raise GenerationFailed("TPM NV_ReadPublic: short public area")
    (policy_len,) = struct.unpack_from(">H", out, 12)
    if len(out) < 16 + policy_len:
        raise GenerationFailed("TPM NV_ReadPublic: truncated public area")
    (size,) = struct.unpack_from(">H", out, 14 + policy_len)
    return size


def nv_define(tpm, index: int, size: int) -> None:
    public = struct.pack(">IHIH", index, TPM_ALG_SHA256, NV_ATTRIBUTES, 0) + struct.pack(">H", size)
    params = struct.pack(">H", 0) + struct.pack(">H", len(public)) + public  # empty auth
    _call(tpm, CC_NV_DEFINE_SPACE, struct.pack(">I", TPM_RH_OWNER), params, True, "NV_DefineSpace")


def nv_write(tpm, index: int, data: bytes) -> None:
    params = struct.pack(">H", len(data)) + data + struct.pack(">H", 0)
    _call(tpm, CC_NV_WRITE, struct.pack(">II", index, index), params, True, "NV_Write")


def nv_read(tpm, index: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        n = min(CHUNK, size - len(out))
        body = _call(
            tpm,
            CC_NV_READ,
            struct.pack(">II", index, index),
            struct.pack(">HH", n, len(out)),
            True,
            "NV_Read",
        )
        if len(body) < 2:
            raise GenerationFailed("TPM NV_Read: short response")
        (got,) = struct.unpack_from(">H", body, 0)
        if got != n or len(body) < 2 + got:
            raise GenerationFailed(f"TPM NV_Read returned {got} bytes, asked {n}")
        out += body[2 : 2 + got]
    return bytes(out)


class DeviceTpm:
    """Commands through the kernel's TPM resource manager (one write, one read)."""

    def __init__(self, device: str = TPM_DEVICE):
        self.device = device

    def __call__(self, cmd: bytes) -> bytes:
        try:
            fd = os.open(self.device, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise GenerationFailed(
                f"cannot open the vTPM {self.device}: {exc.strerror or exc} (not an Azure CVM?)"
            ) from None
        try:
            os.write(fd, cmd)
            return os.read(fd, MAX_RESPONSE)
        finally:
            os.close(fd)


def imds_fetch(url: str = IMDS_URL, timeout: float = 5.0) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, headers={"Metadata": "true"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - fixed IMDS URL
            return resp.read(1 << 20)
    except OSError as exc:
        raise GenerationFailed(f"Azure IMDS certification request failed: {exc}") from None


def certificates_from_imds(body: bytes) -> bytes:
    try:
        obj = json.loads(body.decode("utf-8"))
        vcek, chain = obj["vcekCert"], obj["certificateChain"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise GenerationFailed(
            "Azure IMDS certification response lacks vcekCert / certificateChain"
        ) from None
    if not isinstance(vcek, str) or not isinstance(chain, str):
        raise GenerationFailed("Azure IMDS certificates are not strings")
    return vcek.encode() + b"\n" + chain.encode()


class AzSnpProvider:
    platform = "az-sev-snp"

    def __init__(
        self, *, tpm: Optional[Callable[[bytes], bytes]] = None, fetch: Optional[Callable[[], bytes]] = None
    ):
        self.tpm = tpm or DeviceTpm()
        self.fetch = fetch or imds_fetch

    def attest(self, user_data, nonce, public_key) -> bytes:
        data = binding_report_data(public_key, nonce, user_data)
        try:
            size = nv_size(self.tpm, NV_USER_DATA)
            if size != len(data):
                raise GenerationFailed(f"NV index {NV_USER_DATA:#x} holds {size} bytes, not 64")
        except TpmError as exc:
            if not is_handle_error(exc.rc):
                raise
            nv_define(self.tpm, NV_USER_DATA, len(data))
        nv_write(self.tpm, NV_USER_DATA, data)
        size = nv_size(self.tpm, NV_HCL_REPORT)
        if not 0 < size <= MAX_HCL_SIZE:
            raise GenerationFailed(f"HCL report NV index holds {size} bytes")
        hcl = nv_read(self.tpm, NV_HCL_REPORT, size)
        return encode_document(hcl, certificates_from_imds(self.fetch()))
