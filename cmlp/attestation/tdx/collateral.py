"""Intel PCS collateral for TDX, passed in offline (transport.md 5.8 step 3).

:class:`TdxCollateral` holds TCB Info and QE Identity documents (the exact
inner-object bytes Intel signed, plus the signature), the issuer chains
(TCB Signing certificates), PCK CRLs and Root CA CRLs.  Loaders accept:

* a directory (:func:`load_collateral_dir`) in any of the layouts public
  repositories and Intel's PCS use: raw PCS bodies
  (``{"tcbInfo":{...},"signature":"..."}``), issuer chains as PEM or
  URL-encoded PEM (the ``*-Issuer-Chain`` HTTP headers), CRLs as DER, PEM or
  hex, and dcap-qvl ``QuoteCollateralV3`` JSON files.  Files are recognised
  by content, not by name; anything else is ignored.
* one dcap-qvl collateral JSON file (:func:`collateral_from_dcap_qvl_json`).

Nothing is trusted for being in the collateral: every signature is checked
against the pinned Intel SGX Root CA by the verifier.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional

from cmlp.attestation.coded import fail

MAX_FILE = 1 << 20
MAX_FILES = 256


@dataclass(frozen=True)
class SignedJson:
    inner: bytes  # exact signed bytes
    signature: bytes  # 64 bytes r||s
    body: dict  # parsed inner object


@dataclass
class TdxCollateral:
    tcb_infos: List[SignedJson] = field(default_factory=list)
    qe_identities: List[SignedJson] = field(default_factory=list)
    signing_certs: List[bytes] = field(default_factory=list)  # DER
    pck_crls: List[bytes] = field(default_factory=list)  # DER
    root_crls: List[bytes] = field(default_factory=list)  # DER

    def merge(self, other: "TdxCollateral") -> None:
        self.tcb_infos += other.tcb_infos
        self.qe_identities += other.qe_identities
        self.signing_certs += other.signing_certs
        self.pck_crls += other.pck_crls
        self.root_crls += other.root_crls

    @property
    def empty(self) -> bool:
        return not (self.tcb_infos or self.qe_identities or self.pck_crls or self.root_crls)


def _bad(why: str):
    return fail("TDX_COLLATERAL_INCOMPLETE", why)


def _skip_ws(b: bytes, i: int) -> int:
    while i < len(b) and b[i] in b" \t\r\n":
        i += 1
    return i


def _scan_string(b: bytes, i: int) -> int:
    """``b[i]`` is a quote; returns the index after the closing quote."""
    i += 1
    while i < len(b):
        c = b[i]
        if c == 0x5C:  # backslash
            i += 2
            continue
        if c == 0x22:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def _scan_value(b: bytes, i: int) -> int:
    """Index after the JSON value starting at ``b[i]`` (objects, arrays, strings, scalars)."""
    if i >= len(b):
        raise ValueError("missing value")
    if b[i] == 0x22:
        return _scan_string(b, i)
    if b[i] in b"{[":
        depth = 0
        while i < len(b):
            c = b[i]
            if c == 0x22:
                i = _scan_string(b, i)
                continue
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError("unterminated container")
    while i < len(b) and b[i] not in b",}] \t\r\n":
        i += 1
    return i


def top_level_spans(raw: bytes) -> dict:
    """Top-level members of a JSON object -> exact value bytes (no re-serialising)."""
    json.loads(raw.decode("utf-8"))  # validates the whole document first
    out = {}
    i = _skip_ws(raw, 0)
    if i >= len(raw) or raw[i] != 0x7B:
        raise ValueError("not a JSON object")
    i = _skip_ws(raw, i + 1)
    while i < len(raw) and raw[i] != 0x7D:
        end = _scan_string(raw, i)
        key = json.loads(raw[i:end].decode("utf-8"))
        i = _skip_ws(raw, end)
        i = _skip_ws(raw, i + 1)  # ':'
        vend = _scan_value(raw, i)
        out[key] = raw[i:vend]
        i = _skip_ws(raw, vend)
        if i < len(raw) and raw[i] == 0x2C:
            i = _skip_ws(raw, i + 1)
    return out


def _signature(hex_text) -> bytes:
    if not isinstance(hex_text, str):
        raise _bad("signature is not a hex string")
    try:
        sig = bytes.fromhex(hex_text)
    except ValueError:
        raise _bad("signature is not hex") from None
    if len(sig) != 64:
        raise _bad(f"signature is {len(sig)} bytes (64 = r||s)")
    return sig


def signed_json(inner: bytes, signature_hex) -> SignedJson:
    try:
        body = json.loads(inner.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("signed JSON does not parse") from None
    if not isinstance(body, dict):
        raise _bad("signed JSON is not an object")
    return SignedJson(inner=bytes(inner), signature=_signature(signature_hex), body=body)


def parse_pcs_body(raw: bytes) -> Optional[SignedJson]:
    """``{"tcbInfo"|"enclaveIdentity": {...}, "signature": "hex"}`` -> SignedJson, else None."""
    try:
        spans = top_level_spans(bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    for key in ("tcbInfo", "enclaveIdentity"):
        if key in spans and "signature" in spans:
            return signed_json(spans[key], json.loads(spans["signature"]))
    return None


def _certs_from_text(text: bytes) -> List[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"%" in text[:64]:
        text = urllib.parse.unquote_to_bytes(text.strip())
    text = text.replace(b"\x00", b"")
    try:
        certs = x509.load_pem_x509_certificates(text)
    except ValueError:
        return []
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def _crl_der(blob: bytes) -> Optional[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    blob = bytes(blob).strip()
    candidates = [blob]
    try:
        candidates.append(bytes.fromhex(blob.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        pass
    for cand in candidates:
        for loader in (x509.load_der_x509_crl, x509.load_pem_x509_crl):
            try:
                return loader(cand).public_bytes(serialization.Encoding.DER)
            except ValueError:
                continue
    return None


def _add_crl(col: TdxCollateral, der: bytes) -> None:
    from cryptography import x509

    crl = x509.load_der_x509_crl(der)
    cns = crl.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns and cns[0].value == "Intel SGX Root CA":
        col.root_crls.append(der)
    else:
        col.pck_crls.append(der)


def collateral_from_dcap_qvl_json(raw: bytes) -> TdxCollateral:
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("collateral JSON does not parse") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("tcb_info"), str):
        raise _bad("not a dcap-qvl collateral JSON (no tcb_info string)")
    col = TdxCollateral()
    col.tcb_infos.append(signed_json(obj["tcb_info"].encode("utf-8"), obj.get("tcb_info_signature")))
    if isinstance(obj.get("qe_identity"), str):
        col.qe_identities.append(
            signed_json(obj["qe_identity"].encode("utf-8"), obj.get("qe_identity_signature"))
        )
    for key in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        if isinstance(obj.get(key), str):
            col.signing_certs += _certs_from_text(obj[key].encode("utf-8"))
    for key in ("pck_crl", "root_ca_crl"):
        if isinstance(obj.get(key), str):
            der = _crl_der(obj[key].encode("ascii", "replace"))
            if der is None:
                raise _bad(f"{key} is not a CRL")
            _add_crl(col, der)
    return col


def collateral_from_bytes(blob: bytes) -> TdxCollateral:
    """One file's content, recognised by what it is (empty collateral if nothing)."""
    col = TdxCollateral()
    head = blob.lstrip()[:32]
    if head.startswith(b"{"):
        signed = parse_pcs_body(blob)
        if signed is not None:
            (
                col.tcb_infos if "tcbLevels" in signed.body and "fmspc" in signed.body else col.qe_identities
            ).append(signed)
            return col
        try:
            return collateral_from_dcap_qvl_json(blob)
        except Exception:  # noqa: BLE001 - not collateral: ignore the file
            return col
    if head.startswith(b"-----BEGIN") or head.startswith(b"-----BEGIN%20"):
        if b"X509 CRL" in blob[:64]:
            der = _crl_der(blob)
            if der is not None:
                _add_crl(col, der)
        else:
            col.signing_certs += _certs_from_text(blob)
        return col
    if head[:1] == b"\x30" or all(c in b"0123456789abcdefABCDEF" for c in head[:16]):
        der = _crl_der(blob)
        if der is not None:
            _add_crl(col, der)
    return col


def load_collateral_dir(path: str) -> TdxCollateral:
    col = TdxCollateral()
    names = sorted(os.listdir(path))[:MAX_FILES]
    for name in names:
        full = os.path.join(path, name)
        if not os.path.isfile(full) or os.path.getsize(full) > MAX_FILE:
            continue
        with open(full, "rb") as f:
            col.merge(collateral_from_bytes(f.read()))
    return col


def parse_time(text, what: str) -> datetime:
    if not isinstance(text, str):
        raise fail("TDX_COLLATERAL_TIME_INVALID", f"{what} is not a date string")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail("TDX_COLLATERAL_TIME_INVALID", f"{what} {text!r} is not ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when
