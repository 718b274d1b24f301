"""Intel TDX DCAP quote, versions 4 and 5 (Intel TDX DCAP Quoting Library API,
"Quote Format"), little-endian:

  header (48)   version u16 (4|5), att_key_type u16 (2 = ECDSA P-256),
                tee_type u32 (0x81 = TDX), qe_svn u16, pce_svn u16,
                qe_vendor_id (16), user_data (20)
  v5 only (6)   body_type u16 (2 = TD 1.0 -> 584 B, 3 = TD 1.5 -> 648 B), body_size u32
  body          TD report: tee_tcb_svn 16, mrseam 48, mrsignerseam 48, seam_attributes 8,
                td_attributes 8, xfam 8, mrtd 48, mrconfigid 48, mrowner 48,
                mrownerconfig 48, rtmr0..3 4x48, reportdata 64 [, tee_tcb_svn2 16,
                mrservicetd 48]
  sig_data_len u32, sig_data:
                quote signature r||s (64, BE) over header[+v5 fields]+body, SHA-256;
                attestation key x||y (64); certification data type u16 (6),
                size u32: QE report (384) | QE report signature (64) |
                auth data size u16 | auth data | type u16 (5 = PCK chain PEM),
                size u32 | PEM chain (may end with a NUL)

:func:`parse_quote` reads every length before use and returns the exact
length it consumed; what follows (zero padding, appended text in some
published files) is the caller's decision.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from cmlp.attestation.coded import fail

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
BODY_V4 = 584
BODY_TD15 = 648
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
QE_REPORT_SIZE = 384
MAX_QUOTE_SIZE = 32768
MAX_SIG_DATA = 16384

TD_ATTR_DEBUG = 1 << 0


@dataclass(frozen=True)
class TdReport:
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple
    reportdata: bytes
    tee_tcb_svn2: Optional[bytes] = None
    mrservicetd: Optional[bytes] = None

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class QeReport:
    raw: bytes
    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    reportdata: bytes


@dataclass(frozen=True)
class Quote:
    raw: bytes  # exactly the quote (length = consumed)
    version: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    body_type: int
    signed: bytes  # header (+ v5 type/size) + body
    td: TdReport
    signature: bytes  # r||s
    attestation_key: bytes  # x||y
    cert_type: Optional[int]
    qe_report: Optional[QeReport]
    qe_report_signature: Optional[bytes]
    qe_auth_data: Optional[bytes]
    pck_chain_pem: Optional[bytes]


def parse_td_report(b: bytes, td15: bool) -> TdReport:
    off = 0

    def take(n):
        nonlocal off
        out = b[off : off + n]
        off += n
        return out

    fields = dict(
        tee_tcb_svn=take(16),
        mrseam=take(48),
        mrsignerseam=take(48),
        seam_attributes=take(8),
        td_attributes=take(8),
        xfam=take(8),
        mrtd=take(48),
        mrconfigid=take(48),
        mrowner=take(48),
        mrownerconfig=take(48),
    )
    fields["rtmrs"] = tuple(take(48) for _ in range(4))
    fields["reportdata"] = take(64)
    if td15:
        fields["tee_tcb_svn2"] = take(16)
        fields["mrservicetd"] = take(48)
    return TdReport(**fields)


def parse_qe_report(b: bytes) -> QeReport:
    return QeReport(
        raw=b,
        cpusvn=b[0:16],
        miscselect=struct.unpack_from("<I", b, 16)[0],
        attributes=b[48:64],
        mrenclave=b[64:96],
        mrsigner=b[128:160],
        isvprodid=struct.unpack_from("<H", b, 256)[0],
        isvsvn=struct.unpack_from("<H", b, 258)[0],
        reportdata=b[320:384],
    )


def _bad(why: str):
    return fail("TDX_QUOTE_PARSE_FAILED", why)


def parse_quote(data: bytes) -> Quote:
    """Parse one quote from the start of ``data``; ``Quote.raw`` is what it spans."""
    data = bytes(data[: MAX_QUOTE_SIZE + 1])
    if len(data) < HEADER_SIZE:
        raise _bad(f"quote is {len(data)} bytes (header needs {HEADER_SIZE})")
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
    if version not in (4, 5):
        raise fail("TDX_QUOTE_UNSUPPORTED_FORMAT", f"quote version {version} (4 or 5 supported)")
    if key_type != ATT_KEY_ECDSA_P256:
        raise fail("TDX_QUOTE_UNSUPPORTED_FORMAT", f"attestation key type {key_type} (2 = ECDSA P-256)")
    if tee_type != TEE_TYPE_TDX:
        raise fail("TDX_QUOTE_UNSUPPORTED_FORMAT", f"TEE type {tee_type:#x} (0x81 = TDX)")
    pos = HEADER_SIZE
    body_type = 2
    if version == 4:
        body_size = BODY_V4
    else:
        if len(data) < pos + 6:
            raise _bad("v5 quote truncated before body type/size")
        body_type, body_size = struct.unpack_from("<HI", data, pos)
        pos += 6
        expected = {2: BODY_V4, 3: BODY_TD15}.get(body_type)
        if expected is None:
            raise fail("TDX_QUOTE_UNSUPPORTED_FORMAT", f"v5 body type {body_type} (2 = TD 1.0, 3 = TD 1.5)")
        if body_size != expected:
            raise _bad(f"v5 body type {body_type} with body size {body_size} (must be {expected})")
    if len(data) < pos + body_size + 4:
        raise _bad("quote truncated in the body or before sig_data_len")
    td = parse_td_report(data[pos : pos + body_size], body_size == BODY_TD15)
    signed = data[: pos + body_size]
    pos += body_size
    (sig_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if sig_len > MAX_SIG_DATA or sig_len > len(data) - pos:
        raise _bad(f"sig_data_len {sig_len} runs past the quote ({len(data) - pos} bytes left)")
    if sig_len < 128:
        raise _bad(f"sig_data_len {sig_len} < 128 (signature + attestation key)")
    sig = data[pos : pos + sig_len]
    end = pos + sig_len
    cert_type = qe = qe_sig = auth = pem = None
    if sig_len >= 134:
        cert_type, cert_size = struct.unpack_from("<HI", sig, 128)
        if cert_size != sig_len - 134:
            raise _bad(f"certification data size {cert_size} != {sig_len - 134} bytes present")
        cert = sig[134:]
        if cert_type == CERT_TYPE_QE_REPORT:
            if len(cert) < QE_REPORT_SIZE + 64 + 2:
                raise _bad("QE report certification data truncated")
            qe = parse_qe_report(cert[:QE_REPORT_SIZE])
            qe_sig = cert[QE_REPORT_SIZE : QE_REPORT_SIZE + 64]
            p = QE_REPORT_SIZE + 64
            (auth_len,) = struct.unpack_from("<H", cert, p)
            p += 2
            if auth_len > len(cert) - p:
                raise _bad("QE auth data runs past the certification data")
            auth = cert[p : p + auth_len]
            p += auth_len
            if len(cert) - p < 6:
                raise _bad("inner certification data header truncated")
            inner_type, inner_size = struct.unpack_from("<HI", cert, p)
            p += 6
            if inner_size != len(cert) - p:
                raise _bad(f"inner certification data size {inner_size} != {len(cert) - p}")
            if inner_type != CERT_TYPE_PCK_CHAIN:
                raise fail(
                    "TDX_QUOTE_UNSUPPORTED_FORMAT",
                    f"inner certification data type {inner_type} (5 = PCK chain)",
                )
            pem = cert[p:]
    elif sig_len != 128:
        raise _bad(f"sig_data_len {sig_len}: certification data header truncated")
    return Quote(
        raw=data[:end],
        version=version,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=data[12:28],
        body_type=body_type,
        signed=signed,
        td=td,
        signature=sig[:64],
        attestation_key=sig[64:128],
        cert_type=cert_type,
        qe_report=qe,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=pem,
    )
