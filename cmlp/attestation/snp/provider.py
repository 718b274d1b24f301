"""SEV-SNP provider: an extended attestation report from ``/dev/sev-guest``.

Linux uapi ``include/uapi/linux/sev-guest.h``::

    struct snp_report_req      { __u8 user_data[64]; __u32 vmpl; __u8 rsvd[28]; };   /* 96 */
    struct snp_ext_report_req  { struct snp_report_req data; __u64 certs_address;
                                 __u32 certs_len; };                                   /* 112 */
    struct snp_report_resp     { __u8 data[4000]; };
    struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data;
                                     __u64 exitinfo2; };                               /* 32 */
    SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)

The response (MSG_REPORT_RSP) is ``status u32, report_size u32, 24 reserved,
report``.  The certificate buffer (page-aligned, a multiple of 4 KiB) receives
a GUID table (``guid[16], offset u32, length u32`` entries, all-zero
terminator) whose entries point into the same buffer.  When it is too small
the ioctl fails and ``exitinfo2`` carries ``SNP_GUEST_VMM_ERR_INVALID_LEN``
(vmm_error 1) with ``certs_len`` set to the size needed: the provider retries
once with that size.

REPORT_DATA = pk (32) || nonce (32); the chain is the DER of the ARK, ASK
(or ASVK) and VCEK (or VLEK) entries concatenated (transport.md 5.6).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import uuid
from typing import Callable, Optional

from cmlp.attestation.snp.document import encode_document
from cmlp.attestation.snp.report import REPORT_SIZE
from cmlp.errors import GenerationFailed

SEV_GUEST_DEVICE = "/dev/sev-guest"
PAGE = 4096
DEFAULT_CERTS_LEN = 4 * PAGE
MAX_CERTS_LEN = 64 * PAGE
RESP_SIZE = 4000
MSG_VERSION = 1
VMM_ERR_INVALID_LEN = 1

_IOCTL = struct.Struct("=B7xQQQ")  # msg_version, req_data, resp_data, exitinfo2
_EXT_REQ = struct.Struct("=64sI28sQI4x")  # user_data, vmpl, rsvd, certs_address, certs_len

CERT_GUIDS = {
    uuid.UUID(g): name
    for g, name in (
        ("c0b406a4-a803-4952-9743-3fb6014cd0ae", "ARK"),
        ("4ab7b379-bbac-4fe4-a02f-05aef327c782", "ASK"),
        ("63da758d-e664-4564-adc5-f4b93be8accd", "VCEK"),
        ("a8074bc2-a25a-483e-aae6-39c045a0b8a1", "VLEK"),
    )
}


def _iowr(magic: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (magic << 8) | nr


SNP_GET_EXT_REPORT = _iowr(ord("S"), 0x2, _IOCTL.size)


def _guid_name(raw: bytes) -> Optional[str]:
    # Firmware and hypervisors disagree on GUID byte order: accept either.
    return CERT_GUIDS.get(uuid.UUID(bytes_le=raw)) or CERT_GUIDS.get(uuid.UUID(bytes=raw))


def parse_cert_table(buf: bytes) -> bytes:
    """GUID table -> concatenated DER of the ARK/ASK/VCEK/VLEK entries (others skipped)."""
    out, pos, seen = [], 0, set()
    while True:
        if pos + 24 > len(buf):
            raise GenerationFailed("SEV certificate table has no terminator")
        guid, off, length = buf[pos : pos + 16], *struct.unpack_from("<II", buf, pos + 16)
        pos += 24
        if guid == bytes(16) and off == 0 and length == 0:
            break
        if off > len(buf) or length > len(buf) - off:
            raise GenerationFailed("SEV certificate table entry points outside the buffer")
        name = _guid_name(guid)
        if name is None:
            continue  # e.g. a CRL entry
        if name in seen:
            raise GenerationFailed(f"SEV certificate table lists {name} twice")
        seen.add(name)
        out.append(buf[off : off + length])
    if not out:
        raise GenerationFailed(
            "SEV certificate table holds no AMD certificates (the host did not provision them)"
        )
    return b"".join(out)


class SevGuestTransport:
    """One SNP_GET_EXT_REPORT ioctl; ``ioctl``/``opener`` injectable for tests."""

    def __init__(
        self,
        device: str = SEV_GUEST_DEVICE,
        *,
        ioctl: Optional[Callable] = None,
        opener: Optional[Callable] = None,
    ):
        self.device = device
        self._ioctl = ioctl
        self._open = opener or os.open

    def __call__(self, report_data: bytes, vmpl: int = 0):
        ioctl = self._ioctl
        if ioctl is None:
            import fcntl

            ioctl = fcntl.ioctl
        try:
            fd = self._open(self.device, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise GenerationFailed(
                f"SEV guest device {self.device} not found (not running in an SEV-SNP guest?)"
            ) from None
        except OSError as exc:
            raise GenerationFailed(f"cannot open {self.device}: {exc.strerror}") from None
        try:
            certs_len = DEFAULT_CERTS_LEN
            for _ in range(2):
                result = self._once(fd, ioctl, report_data, vmpl, certs_len)
                if isinstance(result, int):  # the size the firmware asked for
                    if not certs_len < result <= MAX_CERTS_LEN:
                        raise GenerationFailed(f"SEV guest asks for a {result}-byte certificate buffer")
                    certs_len = (result + PAGE - 1) // PAGE * PAGE
                    continue
                return result
            raise GenerationFailed("SEV guest certificate buffer negotiation failed")
        finally:
            os.close(fd)

    def _once(self, fd, ioctl, report_data, vmpl, certs_len):
        certs = mmap.mmap(-1, certs_len)  # page-aligned, zeroed
        try:
            certs_addr = ctypes.addressof(ctypes.c_char.from_buffer(certs))
            req = ctypes.create_string_buffer(
                _EXT_REQ.pack(report_data, vmpl, bytes(28), certs_addr, certs_len), _EXT_REQ.size
            )
            resp = ctypes.create_string_buffer(RESP_SIZE)
            msg = bytearray(_IOCTL.pack(MSG_VERSION, ctypes.addressof(req), ctypes.addressof(resp), 0))
            try:
                ioctl(fd, SNP_GET_EXT_REPORT, msg, True)
            except OSError as exc:
                exitinfo2 = _IOCTL.unpack(msg)[3]
                if (
                    exc.errno in (errno.ENOSPC, errno.EINVAL, errno.EIO)
                    and exitinfo2 >> 32 == VMM_ERR_INVALID_LEN
                ):
                    return _EXT_REQ.unpack(req.raw)[4]
                raise GenerationFailed(
                    f"SNP_GET_EXT_REPORT on {self.device} failed: "
                    f"{exc.strerror or exc} (exitinfo2 {exitinfo2:#x})"
                ) from None
            return resp.raw, bytes(certs)
        finally:
            certs.close()


def parse_report_response(resp: bytes) -> bytes:
    status, size = struct.unpack_from("<II", resp, 0)
    if status != 0:
        raise GenerationFailed(f"SEV firmware returned status {status:#x}")
    if size != REPORT_SIZE:
        raise GenerationFailed(f"SEV firmware returned a {size}-byte report (expected {REPORT_SIZE})")
    return resp[32 : 32 + REPORT_SIZE]


class SnpProvider:
    """``SEV_SNP_V1`` documents from ``/dev/sev-guest`` (REPORT_DATA = pk || nonce)."""

    platform = "sev-snp"

    def __init__(self, device: str = SEV_GUEST_DEVICE, *, transport=None, vmpl: int = 0):
        self.device = device
        self.transport = transport if transport is not None else SevGuestTransport(device)
        self.vmpl = vmpl

    def attest(self, user_data, nonce, public_key) -> bytes:
        report_data = binding_report_data(public_key, nonce, user_data)
        resp, certs = self.transport(report_data, self.vmpl)
        return encode_document(parse_report_response(resp), parse_cert_table(certs))


def binding_report_data(public_key, nonce, user_data=None) -> bytes:
    """pk || nonce; each exactly 32 bytes (transport.md 5.3).

    These TEEs attest 64 bytes only, all taken by the key and the nonce: user
    data cannot be bound, so asking for it fails loudly instead of being dropped.
    """
    if user_data:
        raise GenerationFailed(
            "SEV-SNP/TDX evidence binds only the public key and the nonce "
            "(REPORT_DATA = pk || nonce): user_data cannot be attested"
        )
    for name, value in (("public key", public_key), ("nonce", nonce)):
        if value is None or len(bytes(value)) != 32:
            raise GenerationFailed(f"{name} must be exactly 32 bytes")
    return bytes(public_key) + bytes(nonce)
