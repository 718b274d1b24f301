"""SEV-SNP verification policy (transport.md 5.6, "Default vs development policy")."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import FrozenSet, Optional

from cmlp.attestation.snp.report import PRODUCTS


@dataclass(frozen=True)
class SnpVerifyPolicy:
    expected_measurement: Optional[bytes] = None
    min_report_version: int = 2
    check_validity: bool = True  # informational: validity is always checked (step 5)
    reject_debug: bool = True
    reject_migratable: bool = True
    require_vmpl: Optional[int] = 0
    require_single_socket: Optional[bool] = None
    require_smt: Optional[bool] = None
    accepted_products: FrozenSet[str] = field(default_factory=lambda: frozenset(PRODUCTS))
    check_tcb_binding: bool = True
    crl_der: Optional[bytes] = None

    @classmethod
    def production(cls, **overrides) -> "SnpVerifyPolicy":
        return replace(cls(), **overrides)

    @classmethod
    def development(cls, **overrides) -> "SnpVerifyPolicy":
        return replace(
            cls(
                check_validity=False,
                reject_debug=False,
                reject_migratable=False,
                require_vmpl=None,
                check_tcb_binding=False,
            ),
            **overrides,
        )

    def __post_init__(self):
        if self.expected_measurement is not None and len(self.expected_measurement) != 48:
            raise ValueError("expected_measurement must be 48 bytes")
        if not set(self.accepted_products) <= set(PRODUCTS) or not self.accepted_products:
            raise ValueError(f"accepted_products must be a non-empty subset of {PRODUCTS}")
        if self.require_vmpl is not None and not 0 <= self.require_vmpl <= 3:
            raise ValueError("require_vmpl must be 0..3 or None")
