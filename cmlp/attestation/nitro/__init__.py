"""AWS Nitro Enclaves attestation (transport.md section 5.5), as a package:

* :mod:`.cbor`     - the strict, bounded CBOR reader and the small encoder
                     (the one CBOR implementation in cmlp);
* :mod:`.cose`     - COSE_Sign1 parsing and the ES384 signature;
* :mod:`.x509`     - the cabundle chain to the pinned AWS Nitro root G1
                     (generic path validation: :mod:`cmlp.attestation.pki`);
* :mod:`.verifier` - the payload map and :class:`NitroVerifier`;
* :mod:`.nsm`      - the /dev/nsm provider.

This module re-exports the names of the former single ``nitro.py`` so every
existing import keeps working.

  protected header or the payload map), every CBOR tag except a top-level
  tag 18, reserved encodings, invalid UTF-8, more than MAX_CBOR_DEPTH nested
  containers and more than MAX_CBOR_ITEMS items.  cbor2 (>= 5.4, the
  declared minimum) collapses duplicate keys silently and interprets semantic
  tags (regular expressions, shared references), which is attack surface a
  verifier does not need.  Byte strings are returned as the exact received
  bytes, so the signature always covers what arrived (nothing is re-encoded).
* Optional fields (public_key, user_data, nonce): a byte string -> value,
  CBOR null or absent -> None, **any other type -> VerificationFailed** (the
  reference maps it to None silently).  Each is at most 1024 bytes (the AWS
  attestation document specification).
* PCR indices 0..31 and 1..32 entries (AWS specification: ``index = 0..31``);
  the reference table says 0..15, which real NSMs return today.  Accepting
  the documented range is harmless: pins are by index.
* The protected header must carry ``alg`` = ES384 (-35), no ``crit`` and
  ``alg`` must not be repeated in the unprotected header (which must be a
  map).  The reference does not inspect ``alg`` at all.
* ``cabundle`` must be in the documented order (root first, each entry issued
  by the previous one, the leaf by the last); no path building, no unused
  certificates.  At most MAX_CABUNDLE entries, each at most MAX_CERT_SIZE.
* Path validation is done here (not by OpenSSL) so that it is the same on
  every cryptography version: ECDSA-SHA2 signatures with EC keys on
  P-256/P-384/P-521 only, validity at the verification time for every
  certificate including the root, basicConstraints cA=TRUE for every issuer,
  pathLenConstraint, keyCertSign when keyUsage is present, unknown critical
  extensions rejected, leaf must not be a CA and, when keyUsage is present,
  must allow digitalSignature.
* The whole document is bounded to MAX_DOCUMENT_SIZE (64 KiB, the largest
  document a handshake hello can carry).
"""

from cmlp.attestation.clock import MAX_TIME_MS
from cmlp.attestation.nitro.cbor import (
    MAX_CBOR_DEPTH,
    MAX_CBOR_ITEMS,
    UNDEFINED,
    CborError,
    decode_cbor,
    encode_cbor,
)
from cmlp.attestation.nitro.cose import (
    COSE_ALG_ES384,
    COSE_HEADER_ALG,
    COSE_HEADER_CRIT,
    COSE_SIGN1_TAG,
    ES384_SIGNATURE_SIZE,
    CoseSign1,
    parse_cose_sign1,
    sig_structure,
    verify_cose_signature,
)
from cmlp.attestation.nitro.verifier import (
    DEFAULT_FUTURE_SKEW_SECS,
    DEFAULT_MAX_AGE_SECS,
    MAX_CABUNDLE,
    MAX_CERT_SIZE,
    MAX_DOCUMENT_SIZE,
    MAX_OPTIONAL_FIELD,
    MAX_PCRS,
    PCR_SIZES,
    PLATFORM,
    NitroDocument,
    NitroVerifier,
    parse_payload,
)
from cmlp.attestation.nitro.x509 import (
    AWS_NITRO_ROOT_G1_SHA256,
    AWS_NITRO_ROOT_RESOURCE,
    load_bundled_root,
    validate_chain,
)
from cmlp.attestation.pki import PinnedRoot, load_root
from cmlp.attestation.pki import not_after as _not_after
from cmlp.attestation.pki import not_before as _not_before
from cmlp.attestation.pki import require_cryptography as _require_cryptography

__all__ = [
    "MAX_TIME_MS",
    "MAX_CBOR_DEPTH",
    "MAX_CBOR_ITEMS",
    "UNDEFINED",
    "CborError",
    "decode_cbor",
    "encode_cbor",
    "COSE_ALG_ES384",
    "COSE_HEADER_ALG",
    "COSE_HEADER_CRIT",
    "COSE_SIGN1_TAG",
    "ES384_SIGNATURE_SIZE",
    "CoseSign1",
    "parse_cose_sign1",
    "sig_structure",
    "verify_cose_signature",
    "DEFAULT_FUTURE_SKEW_SECS",
    "DEFAULT_MAX_AGE_SECS",
    "MAX_CABUNDLE",
    "MAX_CERT_SIZE",
    "MAX_DOCUMENT_SIZE",
    "MAX_OPTIONAL_FIELD",
    "MAX_PCRS",
    "PCR_SIZES",
    "PLATFORM",
    "NitroDocument",
    "NitroVerifier",
    "parse_payload",
    "AWS_NITRO_ROOT_G1_SHA256",
    "AWS_NITRO_ROOT_RESOURCE",
    "load_bundled_root",
    "validate_chain",
    "PinnedRoot",
    "load_root",
    "_not_after",
    "_not_before",
    "_require_cryptography",
]
