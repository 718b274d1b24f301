"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1): the TCB
(16 SGX component SVNs, PCESVN, CPUSVN) and the FMSPC."""

from __future__ import annotations

from dataclasses import dataclass

from cmlp.attestation import der as D
from cmlp.attestation.coded import fail

OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
OID_TCB = OID_SGX_EXTENSIONS + ".2"
OID_FMSPC = OID_SGX_EXTENSIONS + ".4"


@dataclass(frozen=True)
class PckTcb:
    sgx_svns: tuple  # 16 component SVNs
    pcesvn: int
    cpusvn: bytes
    fmspc: bytes


def _bad(why: str):
    return fail("TDX_PCK_CHAIN_INVALID", f"PCK SGX extension: {why}")


def pck_tcb(cert) -> PckTcb:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_SGX_EXTENSIONS))
    except x509.ExtensionNotFound:
        raise _bad("missing") from None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else None
    if raw is None:
        raise _bad("unreadable")
    try:
        items = {}
        for tag, val in D.children(D.expect(raw, D.TAG_SEQUENCE)):
            if tag != D.TAG_SEQUENCE:
                raise ValueError("entry is not a SEQUENCE")
            entry = D.children(val)
            if len(entry) != 2 or entry[0][0] != D.TAG_OID:
                raise ValueError("entry is not {OID, value}")
            oid = D.decode_oid(entry[0][1])
            if oid in items:
                raise ValueError(f"duplicate {oid}")
            items[oid] = entry[1]
        if OID_TCB not in items or OID_FMSPC not in items:
            raise ValueError("TCB or FMSPC missing")
        tag, tcb_val = items[OID_TCB]
        if tag != D.TAG_SEQUENCE:
            raise ValueError("TCB is not a SEQUENCE")
        comps = {}
        for t, v in D.children(tcb_val):
            sub = D.children(v)
            if t != D.TAG_SEQUENCE or len(sub) != 2 or sub[0][0] != D.TAG_OID:
                raise ValueError("bad TCB entry")
            oid = D.decode_oid(sub[0][1])
            if oid in comps:
                raise ValueError(f"duplicate {oid}")
            comps[oid] = sub[1]
        svns = []
        for i in range(1, 17):
            t, v = comps[f"{OID_TCB}.{i}"]
            if t != D.TAG_INTEGER:
                raise ValueError(f"component {i} is not an INTEGER")
            svns.append(D.decode_uint(v))
        t, v = comps[f"{OID_TCB}.17"]
        if t != D.TAG_INTEGER:
            raise ValueError("PCESVN is not an INTEGER")
        pcesvn = D.decode_uint(v)
        t, cpusvn = comps[f"{OID_TCB}.18"]
        if t != D.TAG_OCTET_STRING or len(cpusvn) != 16:
            raise ValueError("CPUSVN is not a 16-byte OCTET STRING")
        tag, fmspc = items[OID_FMSPC]
        if tag != D.TAG_OCTET_STRING or len(fmspc) != 6:
            raise ValueError("FMSPC is not a 6-byte OCTET STRING")
    except (ValueError, KeyError) as exc:
        raise _bad(str(exc)) from None
    return PckTcb(tuple(svns), pcesvn, bytes(cpusvn), bytes(fmspc))
