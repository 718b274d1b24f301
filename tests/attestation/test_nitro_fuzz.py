"""Robustness: mutated documents only ever raise cmlp.errors.AttestError subclasses.

Seeded, bounded runs (a few seconds): byte-level mutations of the genuine
documents, and structure-aware ones (a certificate, PCR or header mutated,
then re-encoded) so that hostile input reaches the X.509 and payload code.
"""

import random
from pathlib import Path

import pytest

cbor2 = pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

from cmlp.attestation.nitro import CborError, NitroVerifier, decode_cbor
from cmlp.errors import AttestError

DOCS = Path(__file__).parents[1] / "data" / "nitro-docs"
GENUINE = {
    "blocky-nitrite__nitro_attestation.cbor": 1725719859545,
    "blocky-nitrite__nitro_attestation_debug.cbor": 1725719886508,
    "eternis-rav__example_attestation.cbor": 1725911352400,
    "capeprivacy-cape-js__cape_spec_attestationDocument.cbor": 1663263808848,
    "capeprivacy-cape-js__isomorphic_attestation_bin.cbor": 1657831567740,
    "worldcoin-pontifex__real-attestation-doc.cbor": 1758628609915,
}
INTERESTING = [
    0x00,
    0x17,
    0x18,
    0x1B,
    0x1F,
    0x40,
    0x5F,
    0x7F,
    0x80,
    0x9F,
    0xA0,
    0xBF,
    0xC0,
    0xD2,
    0xF4,
    0xF6,
    0xF7,
    0xF9,
    0xFB,
    0xFF,
]


def mutate_bytes(rng: random.Random, data: bytes, donor: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos] = rng.choice(INTERESTING)
        elif op == 2:
            b[pos:pos] = bytes([rng.randrange(256)]) * rng.randint(1, 8)
        elif op == 3 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 4:
            del b[rng.randint(0, len(b)) :]
        elif op == 5 and b:
            end = min(len(b), pos + rng.randint(1, 64))
            b[pos:pos] = b[pos:end]
        elif op == 6:
            start = rng.randrange(len(donor))
            b[pos : pos + rng.randint(1, 32)] = donor[start : start + rng.randint(1, 32)]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(b)


def mutate_structure(rng: random.Random, raw: bytes, donor: bytes) -> bytes:
    prot, unprot, payload, sig = cbor2.loads(raw)
    fields = cbor2.loads(payload)
    target = rng.randrange(8)
    if target == 0:
        fields["certificate"] = mutate_bytes(rng, fields["certificate"], donor)
    elif target == 1:
        i = rng.randrange(len(fields["cabundle"]))
        fields["cabundle"][i] = mutate_bytes(rng, fields["cabundle"][i], donor)
    elif target == 2:
        rng.shuffle(fields["cabundle"])
    elif target == 3:
        idx = rng.choice(list(fields["pcrs"]))
        fields["pcrs"][idx] = mutate_bytes(rng, fields["pcrs"][idx], donor)
    elif target == 4:
        key = rng.choice(list(fields))
        fields[key] = rng.choice(
            [None, 0, -1, 2**64 - 1, "", b"", [], {}, True, 1.5, cbor2.undefined, [b"x"], {0: b"x"}]
        )
    elif target == 5:
        prot = mutate_bytes(rng, prot, donor)
    elif target == 6:
        sig = mutate_bytes(rng, sig, donor)
    else:
        payload_bytes = mutate_bytes(rng, cbor2.dumps(fields), donor)
        return cbor2.dumps([prot, unprot, payload_bytes, sig])
    return cbor2.dumps([prot, unprot, cbor2.dumps(fields), sig])


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_byte_mutations_only_raise_attest_errors(name):
    raw = (DOCS / name).read_bytes()
    donor = (DOCS / "blocky-nitrite__nitro_attestation.cbor").read_bytes()
    verifier = NitroVerifier(at_ms=GENUINE[name])
    rng = random.Random(f"bytes:{name}")
    signed = signed_parts(raw)
    for _ in range(150):
        doc = mutate_bytes(rng, raw, donor)
        try:
            verifier.verify(doc)
        except AttestError:
            continue
        # Accepted only if the mutation left every signed byte as it was
        # (e.g. it only touched the unprotected header).
        assert signed_parts(doc) == signed


def signed_parts(doc: bytes):
    obj = cbor2.loads(doc)
    obj = obj.value if isinstance(obj, cbor2.CBORTag) else obj
    return obj[0], obj[2], obj[3]


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_structure_mutations_only_raise_attest_errors(name):
    raw = (DOCS / name).read_bytes()
    donor = (DOCS / "capeprivacy-cape-js__cape_spec_attestationDocument.cbor").read_bytes()
    verifier = NitroVerifier(at_ms=GENUINE[name])
    rng = random.Random(f"struct:{name}")
    for _ in range(60):
        doc = mutate_structure(rng, raw, donor)
        if doc == raw:
            continue
        with pytest.raises(AttestError):
            verifier.verify(doc)


def test_random_bytes_only_raise_cbor_errors():
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        try:
            decode_cbor(data, allow_tag=18)
        except CborError:
            pass


def test_random_documents_only_raise_attest_errors():
    rng = random.Random(11)
    verifier = NitroVerifier(at_ms=1725719859545)
    for _ in range(1500):
        prefix = bytes([rng.choice([0x84, 0xD2, 0x9F, 0xA4])])
        data = prefix + bytes(
            rng.choice(INTERESTING + [rng.randrange(256)]) for _ in range(rng.randint(0, 40))
        )
        with pytest.raises(AttestError):
            verifier.verify(data)
