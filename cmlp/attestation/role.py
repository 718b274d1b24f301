"""Pipeline roles bound into attestation documents (issue 10, attack 5).

A stage's measurements say *which code* runs, not *where in the pipeline* it
runs: with the documented pins (the same signer PCR8 on every stage) the host
could relay stage 0 straight into stage 2, swap two stages or run one twice.
So each party binds its role - stage index (or the orchestrator) and the
identity of the manifest - into the document it presents, and each peer checks
the role it expects.

The binding goes through the nonce every platform already attests (Nitro
``nonce``, SEV-SNP and TDX ``REPORT_DATA[32..64]``, mock documents): the document
carries ``SHA-256(LABEL || hello_nonce || role)`` instead of the bare hello nonce.
The hello keeps the bare nonce, so the wire format, the transcript and the key
schedule are unchanged, and freshness is kept (the hello nonce is still random).
No platform code is involved, so every TEE kind gets it.  A peer that binds no
role (the reference) attests the bare nonce: binding is therefore a pipeline
option, on by default between cmlp parties (see docs/attestation.md).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

LABEL = b"cmlp-pipeline-role-v1"
ORCHESTRATOR = 0xFFFFFFFF  # the role index of the orchestrator (not a stage)


@dataclass(frozen=True)
class Role:
    """Stage ``index`` (or ORCHESTRATOR) of the pipeline identified by ``manifest_digest``."""

    index: int
    manifest_digest: bytes

    def __post_init__(self):
        if not 0 <= self.index <= ORCHESTRATOR:
            raise ValueError(f"role index out of range: {self.index}")
        if len(self.manifest_digest) != 32:
            raise ValueError("manifest_digest must be 32 bytes")

    @classmethod
    def orchestrator(cls, manifest_digest: bytes) -> "Role":
        return cls(ORCHESTRATOR, manifest_digest)

    def encode(self) -> bytes:
        """u32 BE index || 32-byte manifest digest."""
        return struct.pack(">I", self.index) + self.manifest_digest

    def bind(self, nonce: bytes) -> bytes:
        """The 32-byte value attested in place of ``nonce``."""
        return hashlib.sha256(LABEL + bytes(nonce) + self.encode()).digest()

    def __str__(self) -> str:
        who = "the orchestrator" if self.index == ORCHESTRATOR else f"stage {self.index}"
        return f"{who} of pipeline {self.manifest_digest.hex()[:16]}"
