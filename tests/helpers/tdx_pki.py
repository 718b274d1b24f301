"""Test Intel-like PKI and synthetic TDX quotes (no hardware, no Intel keys).

Root CA -> Platform CA -> PCK (with the SGX extension: 16 component SVNs,
PCESVN, CPUSVN, FMSPC), Root CA -> TCB Signing; a v4/v5 quote signed by an
attestation key, the QE report signed by the PCK and bound to that key;
TCB Info / QE Identity JSON signed over their exact bytes; CRLs.  Layouts are
written from Intel's DCAP quote format, independently of the verifier.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cmlp.attestation.tdx.collateral import TdxCollateral, signed_json

T0_MS = 1_900_000_000_000
T0 = datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)
FMSPC = bytes.fromhex("00906ed50000")
PK = bytes(range(32))
NONCE = bytes(range(100, 132))
MRTD = bytes(range(48))
RTMRS = tuple(bytes([i + 1]) * 48 for i in range(4))
QE_MRSIGNER = bytes(range(32))


def nm(cn):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
        ]
    )


def _tlv(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + body


def _oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, out)


def _int(v):
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return _tlv(0x02, b)


def sgx_extension(svns, pcesvn, fmspc=FMSPC, cpusvn=bytes(16)):
    base = "1.2.840.113741.1.13.1"
    comps = [_tlv(0x30, _oid(f"{base}.2.{i + 1}") + _int(s)) for i, s in enumerate(svns)]
    comps.append(_tlv(0x30, _oid(f"{base}.2.17") + _int(pcesvn)))
    comps.append(_tlv(0x30, _oid(f"{base}.2.18") + _tlv(0x04, cpusvn)))
    items = [
        _tlv(0x30, _oid(f"{base}.1") + _tlv(0x04, bytes(16))),
        _tlv(0x30, _oid(f"{base}.2") + _tlv(0x30, b"".join(comps))),
        _tlv(0x30, _oid(f"{base}.3") + _tlv(0x04, b"\0\0")),
        _tlv(0x30, _oid(f"{base}.4") + _tlv(0x04, fmspc)),
    ]
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(base), _tlv(0x30, b"".join(items)))


def cert(subject, issuer, issuer_key, pub, *, ca, nb=T0 - YEAR, na=T0 + YEAR, exts=()):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for e in exts:
        b = b.add_extension(e, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def der(c):
    return c.public_bytes(serialization.Encoding.DER)


def pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def rs(key, data):
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class TdxPki:
    root_key: object
    root: object
    ca_key: object
    ca: object
    pck_key: object
    pck: object
    signer_key: object
    signer: object
    ak: object = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))


def make_pki(
    *, svns=(5,) * 16, pcesvn=11, fmspc=FMSPC, pck_nb=T0 - YEAR, pck_na=T0 + YEAR, signer_na=T0 + YEAR
) -> TdxPki:
    rk = ec.generate_private_key(ec.SECP256R1())
    root = cert(
        nm("Intel SGX Root CA"),
        nm("Intel SGX Root CA"),
        rk,
        rk.public_key(),
        ca=True,
        nb=T0 - 10 * YEAR,
        na=T0 + 10 * YEAR,
    )
    ck = ec.generate_private_key(ec.SECP256R1())
    ca = cert(nm("Intel SGX PCK Platform CA"), root.subject, rk, ck.public_key(), ca=True)
    pk = ec.generate_private_key(ec.SECP256R1())
    pck = cert(
        nm("Intel SGX PCK Certificate"),
        ca.subject,
        ck,
        pk.public_key(),
        ca=False,
        nb=pck_nb,
        na=pck_na,
        exts=[sgx_extension(svns, pcesvn, fmspc)],
    )
    sk = ec.generate_private_key(ec.SECP256R1())
    signer = cert(nm("Intel SGX TCB Signing"), root.subject, rk, sk.public_key(), ca=False, na=signer_na)
    return TdxPki(rk, root, ck, ca, pk, pck, sk, signer)


@dataclass
class QuoteFields:
    version: int = 4
    body_type: int = 2
    tee_tcb_svn: bytes = bytes([3, 0, 5]) + bytes(13)
    td_attributes: bytes = bytes(8)
    mrtd: bytes = MRTD
    rtmrs: tuple = RTMRS
    reportdata: bytes = PK + NONCE
    mrsignerseam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    qe_mrsigner: bytes = QE_MRSIGNER
    qe_isvprodid: int = 2
    qe_isvsvn: int = 8
    qe_attributes: bytes = bytes([0x11]) + bytes(15)
    auth_data: bytes = bytes(range(32))
    bind_qe: bool = True
    pck_chain: bytes = None  # PEM; default leaf, CA, root
    with_cert_data: bool = True


def make_quote(pki: TdxPki, f: QuoteFields = None, *, ak=None, pck_key=None) -> bytes:
    f = f or QuoteFields()
    ak = ak or pki.ak
    header = struct.pack("<HHIHH", f.version, 2, 0x81, 0, 0) + bytes(16) + bytes(20)
    body = (
        f.tee_tcb_svn
        + bytes(48)
        + f.mrsignerseam
        + f.seam_attributes
        + f.td_attributes
        + bytes(8)
        + f.mrtd
        + bytes(48 * 3)
        + b"".join(f.rtmrs)
        + f.reportdata
    )
    if f.body_type == 3:
        body += bytes(16) + bytes(48)
    if f.version == 5:
        header += struct.pack("<HI", f.body_type, len(body))
    signed = header + body
    ak_xy = ak.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    sig = rs(ak, signed) + ak_xy
    if f.with_cert_data:
        qe = bytearray(384)
        struct.pack_into("<I", qe, 16, 0)
        qe[48:64] = f.qe_attributes
        qe[128:160] = f.qe_mrsigner
        struct.pack_into("<HH", qe, 256, f.qe_isvprodid, f.qe_isvsvn)
        if f.bind_qe:
            qe[320:352] = hashlib.sha256(ak_xy + f.auth_data).digest()
        chain = (
            f.pck_chain if f.pck_chain is not None else (pem(pki.pck) + pem(pki.ca) + pem(pki.root) + b"\0")
        )
        qe_sig = rs(pck_key or pki.pck_key, bytes(qe))
        inner = (
            bytes(qe)
            + qe_sig
            + struct.pack("<H", len(f.auth_data))
            + f.auth_data
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        sig += struct.pack("<HI", 6, len(inner)) + inner
    return signed + struct.pack("<I", len(sig)) + sig


def tcb_info(*, fmspc=FMSPC, levels=None, issue=T0 - DAY, nxt=T0 + 29 * DAY, module=None):
    levels = (
        levels
        if levels is not None
        else [
            dict(sgx=[5] * 16, pcesvn=11, tdx=[3, 0, 5] + [0] * 13, status="UpToDate"),
            dict(sgx=[1] * 16, pcesvn=5, tdx=[0] * 16, status="OutOfDate", adv=["INTEL-SA-1"]),
        ]
    )
    out = {
        "id": "TDX",
        "version": 3,
        "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nextUpdate": nxt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fmspc": fmspc.hex(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": module or {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "ff" * 8},
        "tcbLevels": [],
    }
    for lv in levels:
        entry = {
            "tcb": {
                "sgxtcbcomponents": [{"svn": s} for s in lv["sgx"]],
                "pcesvn": lv["pcesvn"],
                "tdxtcbcomponents": [{"svn": s} for s in lv["tdx"]],
            },
            "tcbDate": "2024-01-01T00:00:00Z",
            "tcbStatus": lv["status"],
        }
        if lv.get("adv"):
            entry["advisoryIDs"] = lv["adv"]
        out["tcbLevels"].append(entry)
    return out


def qe_identity(
    *,
    mrsigner=QE_MRSIGNER,
    isvprodid=2,
    levels=((8, "UpToDate"), (4, "OutOfDate")),
    issue=T0 - DAY,
    nxt=T0 + 29 * DAY,
):
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nextUpdate": nxt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": mrsigner.hex().upper(),
        "isvprodid": isvprodid,
        "tcbLevels": [
            {"tcb": {"isvsvn": s}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": st} for s, st in levels
        ],
    }


def sign_json(pki, obj, key=None):
    inner = json.dumps(obj, separators=(",", ":")).encode()
    return signed_json(inner, rs(key or pki.signer_key, inner).hex())


def crl(issuer_cert, issuer_key, *, revoked=(), last=T0 - DAY, nxt=T0 + DAY):
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(last)
        .next_update(nxt)
    )
    for s in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(last).build()
        )
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def collateral(pki, *, tcb=None, qe=None, pck_crl=None, root_crl=None, signers=None):
    return TdxCollateral(
        tcb_infos=[sign_json(pki, tcb or tcb_info())],
        qe_identities=[sign_json(pki, qe or qe_identity())],
        signing_certs=signers if signers is not None else [der(pki.signer), der(pki.root)],
        pck_crls=[pck_crl if pck_crl is not None else crl(pki.ca, pki.ca_key)],
        root_crls=[root_crl if root_crl is not None else crl(pki.root, pki.root_key)],
    )
