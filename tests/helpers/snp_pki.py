"""Test PKI and synthetic SEV-SNP reports (no hardware, no AMD keys).

``make_pki()`` builds ARK (self-signed) -> ASK -> VCEK the way AMD does: RSA
keys with RSA-PSS/SHA-384 signatures for ARK and ASK, an EC P-384 VCEK with
the AMD TCB extensions (OIDs 1.3.6.1.4.1.3704.1.*).  ``make_report()`` writes
a 1184-byte ATTESTATION_REPORT from keyword fields (layout written from the
AMD SEV-SNP ABI specification, independently of the verifier's constants)
and signs bytes 0..0x29F with the VCEK.  The verifier trusts the test ARK
through ``trusted_arks``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

T0_MS = 1_900_000_000_000
T0 = datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)
YEAR = timedelta(days=365)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
PK = bytes(range(32))
NONCE = bytes(range(100, 132))
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(1, 65))


def amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def der_int(v: int) -> bytes:
    return bytes([0x02, 1, v]) if v < 0x80 else bytes([0x02, 2, 0, v])


def ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def amd_ext(oid: str, value: bytes):
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1." + oid), value)


@dataclass
class SnpPki:
    ark_key: object
    ask_key: object
    vek_key: object
    ark: x509.Certificate
    ask: x509.Certificate
    vek: x509.Certificate

    def der(self, which) -> bytes:
        return getattr(self, which).public_bytes(serialization.Encoding.DER)

    def chain(self, order=("ark", "ask", "vek")) -> bytes:
        return b"".join(self.der(w) for w in order)


_KEYS = {}


def _rsa(tag):
    if tag not in _KEYS:
        _KEYS[tag] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[tag]


def _ec(tag):
    if tag not in _KEYS:
        _KEYS[tag] = ec.generate_private_key(ec.SECP384R1())
    return _KEYS[tag]


def build_cert(subject, issuer, issuer_key, pub, *, ca, nb, na, exts=(), serial=None, pss=True):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for e in exts:
        b = b.add_extension(e, critical=False)
    if isinstance(issuer_key, rsa.RSAPrivateKey) and pss:
        return b.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
    return b.sign(issuer_key, hashes.SHA384())


def vcek_extensions(
    *, bl=3, tee=0, snp=8, ucode=115, product="Milan-B0", hwid=CHIP_ID, kind="VCEK", fmc=None, drop=()
):
    exts = [
        ("3.1", der_int(bl)),
        ("3.2", der_int(tee)),
        ("3.3", der_int(snp)),
        ("3.8", der_int(ucode)),
        ("2", ia5(product)),
    ]
    if fmc is not None:
        exts.append(("3.9", der_int(fmc)))
    if kind == "VCEK" and hwid is not None:
        exts.append(("4", hwid))
    if kind == "VLEK":
        exts.append(("5", ia5("CN=test-csp")))
    return [amd_ext(o, v) for o, v in exts if o not in drop]


def make_pki(
    *,
    product="Milan",
    kind="VCEK",
    vek_nb=T0 - YEAR,
    vek_na=T0 + YEAR,
    ask_nb=T0 - 5 * YEAR,
    ask_na=T0 + 5 * YEAR,
    ark_cn=None,
    ask_cn=None,
    vek_exts=None,
    vek_curve=None,
    ark_tag="ark",
) -> SnpPki:
    ark_key, ask_key = _rsa(ark_tag), _rsa("ask")
    vek_key = _ec("vek") if vek_curve is None else ec.generate_private_key(vek_curve)
    ark_n = amd_name(ark_cn or f"ARK-{product}")
    ask_n = amd_name(ask_cn or (f"SEV-VLEK-{product}" if kind == "VLEK" else f"SEV-{product}"))
    ark = build_cert(
        ark_n, ark_n, ark_key, ark_key.public_key(), ca=True, nb=T0 - 10 * YEAR, na=T0 + 10 * YEAR
    )
    ask = build_cert(ask_n, ark_n, ark_key, ask_key.public_key(), ca=True, nb=ask_nb, na=ask_na)
    exts = (
        vek_exts
        if vek_exts is not None
        else vcek_extensions(kind=kind, product="Milan-B0" if product == "Milan" else product)
    )
    vek = build_cert(
        amd_name(f"SEV-{kind}"),
        ask_n,
        ask_key,
        vek_key.public_key(),
        ca=False,
        nb=vek_nb,
        na=vek_na,
        exts=exts,
    )
    return SnpPki(ark_key, ask_key, vek_key, ark, ask, vek)


@dataclass
class ReportFields:
    version: int = 3
    guest_svn: int = 0
    policy: int = 0x30000  # SMT allowed, reserved bit 17 set
    vmpl: int = 0
    sig_algo: int = 1
    key_info: int = 0  # VCEK, chip key not masked
    report_data: bytes = PK + NONCE
    measurement: bytes = MEASUREMENT
    reported_tcb: bytes = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # Milan: bl tee .. snp ucode
    chip_id: bytes = CHIP_ID
    cpuid: bytes = bytes([0x19, 0x01, 0x01])  # Milan
    extra: dict = field(default_factory=dict)  # offset -> bytes


def make_report(pki: Optional[SnpPki], f: Optional[ReportFields] = None, *, sign_key=None) -> bytes:
    f = f or ReportFields()
    r = bytearray(1184)
    struct.pack_into("<IIQ", r, 0, f.version, f.guest_svn, f.policy)
    struct.pack_into("<II", r, 0x30, f.vmpl, f.sig_algo)
    r[0x38:0x40] = f.reported_tcb  # CURRENT_TCB
    struct.pack_into("<I", r, 0x48, f.key_info)
    r[0x50:0x90] = f.report_data
    r[0x90:0xC0] = f.measurement
    r[0x180:0x188] = f.reported_tcb
    if f.version >= 3:
        r[0x188:0x18B] = f.cpuid
    r[0x1A0:0x1E0] = f.chip_id
    r[0x1E0:0x1E8] = f.reported_tcb  # COMMITTED_TCB
    r[0x1F0:0x1F8] = f.reported_tcb  # LAUNCH_TCB
    for off, val in f.extra.items():
        r[off : off + len(val)] = val
    key = sign_key if sign_key is not None else pki.vek_key
    der = key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    rr, ss = decode_dss_signature(der)
    r[0x2A0 : 0x2A0 + 72] = rr.to_bytes(72, "little")
    r[0x2E8 : 0x2E8 + 72] = ss.to_bytes(72, "little")
    return bytes(r)


def make_crl(
    pki: SnpPki, *, revoked=(), last=T0 - timedelta(days=1), nxt=T0 + timedelta(days=1), key=None, issuer=None
):
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer or pki.ark.subject)
        .last_update(last)
        .next_update(nxt)
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
        )
    k = key or pki.ark_key
    if isinstance(k, rsa.RSAPrivateKey):
        return b.sign(k, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)
    return b.sign(k, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
