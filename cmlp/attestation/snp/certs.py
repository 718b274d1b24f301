"""AMD certificates: the DER stream of a wire document, roles, VEK extensions,
and the AMD roots built into cmlp (cmlp/data/amd_sev_snp_certs.pem).

The bundled file holds, per product, the ARK (self-signed root), the ASK
(signs VCEKs) and the ASVK (signs VLEKs), exactly as AMD's KDS serves them
(`/vcek/v1/<product>/cert_chain`, `/vlek/v1/<product>/cert_chain`).  Each is
pinned here by the SHA-256 of its DER; loading fails if a byte changed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from cmlp.attestation.coded import fail
from cmlp.attestation.pki import require_cryptography, sha256_hex
from cmlp.attestation.snp.report import GENOA, MILAN, TURIN

if TYPE_CHECKING:  # an optional dependency: imported lazily at run time
    from cryptography import x509

AMD_CERTS_RESOURCE = "amd_sev_snp_certs.pem"

# SHA-256 of the DER of every bundled AMD certificate (README of snp-docs, AMD KDS).
AMD_ARK_SHA256 = {
    MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
AMD_ASK_SHA256 = {
    MILAN: "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
    GENOA: "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
    TURIN: "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
}
AMD_ASVK_SHA256 = {
    MILAN: "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    GENOA: "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    TURIN: "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
}

MAX_CHAIN_BYTES = 64 * 1024
MAX_CERTS = 8

OID_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = OID_AMD + ".1"
OID_PRODUCT_NAME = OID_AMD + ".2"
OID_BL_SPL = OID_AMD + ".3.1"
OID_TEE_SPL = OID_AMD + ".3.2"
OID_SNP_SPL = OID_AMD + ".3.3"
OID_UCODE_SPL = OID_AMD + ".3.8"
OID_FMC_SPL = OID_AMD + ".3.9"
OID_HWID = OID_AMD + ".4"
OID_CSP_ID = OID_AMD + ".5"

ROLE_ARK, ROLE_ASK, ROLE_VEK = "ARK", "ASK", "VEK"


def load_certificate(der: bytes) -> x509.Certificate:
    """DER -> certificate; AMD's VCEK/VLEK use serial 0, which cryptography warns about."""
    from cryptography import x509

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cert = x509.load_der_x509_certificate(bytes(der))
        cert.serial_number  # noqa: B018 - parse it now, under the filter
    return cert


def split_der_stream(data: bytes) -> List[bytes]:
    """Concatenated DER certificates -> list of DER blobs (tag 0x30, definite length,
    at most 4 length bytes).  SNP_CERT_CHAIN_EMPTY / SNP_CERT_CHAIN_MALFORMED."""
    data = bytes(data)
    if not data:
        raise fail("SNP_CERT_CHAIN_EMPTY", "certificate chain is empty (no ARK, ASK or VEK)")
    if len(data) > MAX_CHAIN_BYTES:
        raise fail(
            "SNP_CERT_CHAIN_MALFORMED", f"certificate chain is {len(data)} bytes (max {MAX_CHAIN_BYTES})"
        )
    out: List[bytes] = []
    pos = 0
    while pos < len(data):
        if len(out) >= MAX_CERTS:
            raise fail("SNP_CERT_CHAIN_MALFORMED", f"more than {MAX_CERTS} certificates")
        if data[pos] != 0x30:
            raise fail(
                "SNP_CERT_CHAIN_MALFORMED",
                f"certificate {len(out)} does not start with a DER SEQUENCE (offset {pos})",
            )
        if pos + 2 > len(data):
            raise fail("SNP_CERT_CHAIN_MALFORMED", f"certificate {len(out)} is truncated")
        first = data[pos + 1]
        if first < 0x80:
            body, head = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4:
                raise fail(
                    "SNP_CERT_CHAIN_MALFORMED", f"certificate {len(out)} has an unsupported DER length form"
                )
            if pos + 2 + n > len(data):
                raise fail("SNP_CERT_CHAIN_MALFORMED", f"certificate {len(out)} is truncated")
            body = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
            head = 2 + n
        end = pos + head + body
        if end > len(data):
            raise fail("SNP_CERT_CHAIN_MALFORMED", f"certificate {len(out)} runs past the end of the chain")
        out.append(data[pos:end])
        pos = end
    return out


def common_name(cert) -> str:
    from cryptography import x509

    with warnings.catch_warnings():  # odd attribute lengths warn; the CN decides anyway
        warnings.simplefilter("ignore")
        attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if len(attrs) == 1 else ""


def role_of(cn: str) -> Optional[str]:
    if cn.startswith("ARK-"):
        return ROLE_ARK
    if cn in ("SEV-VCEK", "SEV-VLEK"):
        return ROLE_VEK
    if cn.startswith("SEV-"):
        return ROLE_ASK
    return None


@dataclass(frozen=True)
class AmdChain:
    ark: x509.Certificate
    ask: x509.Certificate  # ASK or ASVK
    vek: x509.Certificate  # VCEK or VLEK
    vek_kind: str  # "VCEK" / "VLEK"


def classify(certs_der: List[bytes]) -> AmdChain:
    """SNP step 4: one ARK, one ASK/ASVK, one VCEK/VLEK; nothing else."""
    if len(certs_der) < 3:
        raise fail(
            "SNP_CERT_TYPE_MISSING",
            f"certificate chain holds {len(certs_der)} certificates (ARK, ASK and VCEK/VLEK needed)",
        )
    roles: Dict[str, x509.Certificate] = {}
    for i, der in enumerate(certs_der):
        try:
            cert = load_certificate(der)
            cn = common_name(cert)
        except Exception as exc:  # noqa: BLE001 - hostile DER
            raise fail(
                "SNP_CERT_CHAIN_MALFORMED", f"certificate {i} does not parse: {type(exc).__name__}: {exc}"
            ) from None
        role = role_of(cn)
        if role is None:
            raise fail("SNP_CERT_TYPE_UNKNOWN", f"certificate {i} has unexpected CN {cn!r}")
        if role in roles:
            raise fail("SNP_CERT_TYPE_DUPLICATE", f"two {role} certificates in the chain")
        roles[role] = cert
    for role in (ROLE_ARK, ROLE_ASK, ROLE_VEK):
        if role not in roles:
            raise fail("SNP_CERT_TYPE_MISSING", f"no {role} certificate in the chain")
    vek_kind = common_name(roles[ROLE_VEK])[4:]
    return AmdChain(roles[ROLE_ARK], roles[ROLE_ASK], roles[ROLE_VEK], vek_kind)


@dataclass(frozen=True)
class VekExtensions:
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: Optional[int]
    hwid: Optional[bytes]  # VCEK only: 64 B (Milan/Genoa) or 8 B (Turin)
    product_name: str
    csp_id: Optional[str]  # VLEK only


def _raw_ext(cert, oid: str) -> Optional[bytes]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return bytes(value.value) if isinstance(value, x509.UnrecognizedExtension) else None


def _der_small_int(raw: bytes, name: str) -> int:
    # INTEGER 0..255: 02 01 vv, or 02 02 00 vv (leading zero for vv >= 0x80)
    if len(raw) == 3 and raw[0] == 0x02 and raw[1] == 1 and raw[2] < 0x80:
        return raw[2]
    if len(raw) == 4 and raw[0] == 0x02 and raw[1] == 2 and raw[2] == 0 and raw[3] >= 0x80:
        return raw[3]
    raise fail("SNP_VEK_EXTENSION_INVALID", f"VEK {name} is not a DER INTEGER 0..255")


def _ia5_or_raw(raw: bytes) -> str:
    if len(raw) >= 2 and raw[0] == 0x16 and raw[1] < 0x80 and len(raw) == 2 + raw[1]:
        raw = raw[2:]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise fail("SNP_VEK_EXTENSION_INVALID", "VEK productName is not ASCII") from None
    if not text.isprintable():
        raise fail("SNP_VEK_EXTENSION_INVALID", "VEK productName is not printable")
    return text


def vek_extensions(vek, vek_kind: str) -> VekExtensions:
    """SNP step 6: every TCB extension is required (hwID for a VCEK)."""

    def need(oid: str, name: str) -> bytes:
        raw = _raw_ext(vek, oid)
        if raw is None:
            raise fail("SNP_VEK_EXTENSION_MISSING", f"{vek_kind} has no {name} extension ({oid})")
        return raw

    spl = {
        name: _der_small_int(need(oid, name), name)
        for oid, name in (
            (OID_BL_SPL, "blSPL"),
            (OID_TEE_SPL, "teeSPL"),
            (OID_SNP_SPL, "snpSPL"),
            (OID_UCODE_SPL, "ucodeSPL"),
        )
    }
    fmc_raw = _raw_ext(vek, OID_FMC_SPL)
    product = _ia5_or_raw(need(OID_PRODUCT_NAME, "productName"))
    hwid = None
    if vek_kind == "VCEK":
        hwid = need(OID_HWID, "hwID")
        if len(hwid) not in (8, 64):
            raise fail(
                "SNP_VEK_EXTENSION_INVALID", f"VCEK hwID is {len(hwid)} bytes (64 on Milan/Genoa, 8 on Turin)"
            )
    csp = _raw_ext(vek, OID_CSP_ID)
    return VekExtensions(
        bl_spl=spl["blSPL"],
        tee_spl=spl["teeSPL"],
        snp_spl=spl["snpSPL"],
        ucode_spl=spl["ucodeSPL"],
        fmc_spl=None if fmc_raw is None else _der_small_int(fmc_raw, "fmcSPL"),
        hwid=hwid,
        product_name=product,
        csp_id=None if csp is None else _ia5_or_raw(csp),
    )


def product_from_name(name: str) -> Optional[str]:
    """``Milan-B0`` -> Milan; ``Genoa`` -> Genoa; ``Turin`` -> Turin."""
    base = name.split("-", 1)[0]
    return base if base in (MILAN, GENOA, TURIN) else None


@dataclass(frozen=True)
class AmdRoots:
    ark: Dict[str, x509.Certificate]  # product -> ARK cert
    ask: Dict[str, x509.Certificate]  # product -> ASK cert
    asvk: Dict[str, x509.Certificate]  # product -> ASVK cert
    der: Dict[str, bytes]  # sha256 -> DER


@lru_cache(maxsize=1)
def bundled_roots() -> AmdRoots:
    """The AMD certificates shipped in cmlp/data, each checked against its pinned SHA-256."""
    require_cryptography("SEV-SNP attestation", "snp")
    from importlib.resources import files

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = files("cmlp").joinpath("data").joinpath(AMD_CERTS_RESOURCE).read_bytes()
    by_hash = {}
    for cert in x509.load_pem_x509_certificates(pem):
        der = cert.public_bytes(serialization.Encoding.DER)
        by_hash[sha256_hex(der)] = (cert, der)
    maps: Tuple[Dict, Dict, Dict] = ({}, {}, {})
    for table, out in zip((AMD_ARK_SHA256, AMD_ASK_SHA256, AMD_ASVK_SHA256), maps, strict=True):
        for product, digest in table.items():
            if digest not in by_hash:
                raise ValueError(
                    f"bundled AMD certificate {product} {digest[:16]}... "
                    f"missing or altered in {AMD_CERTS_RESOURCE}"
                )
            out[product] = by_hash[digest][0]
    return AmdRoots(ark=maps[0], ask=maps[1], asvk=maps[2], der={h: d for h, (_, d) in by_hash.items()})


def intermediate_for(product: str, vek_kind: str) -> x509.Certificate:
    roots = bundled_roots()
    return (roots.asvk if vek_kind == "VLEK" else roots.ask)[product]


def spki_der(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
