"""TDX verification policy (transport.md 5.8)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import FrozenSet, Mapping, Optional

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclass(frozen=True)
class TdxVerifyPolicy:
    """``require_collateral``: the reference defaults to False (quote signature
    only when no collateral is given); cmlp's production default is True,
    because a quote without collateral proves nothing about the platform."""

    expected_mrtd: Optional[bytes] = None
    expected_rtmrs: Mapping[int, bytes] = field(default_factory=dict)
    expected_nonce: Optional[bytes] = None
    expected_public_key: Optional[bytes] = None
    require_collateral: bool = True
    accepted_tcb_statuses: FrozenSet[str] = frozenset({"UpToDate", "SWHardeningNeeded"})
    reject_debug_td: bool = True

    @classmethod
    def production(cls, **overrides) -> "TdxVerifyPolicy":
        return replace(cls(), **overrides)

    @classmethod
    def development(cls, **overrides) -> "TdxVerifyPolicy":
        return replace(
            cls(
                require_collateral=False,
                reject_debug_td=False,
                accepted_tcb_statuses=frozenset(TCB_STATUSES) - {"Revoked"},
            ),
            **overrides,
        )

    @classmethod
    def reference_default(cls, **overrides) -> "TdxVerifyPolicy":
        """The reference's defaults exactly (collateral optional)."""
        return replace(cls(require_collateral=False), **overrides)

    def __post_init__(self):
        if self.expected_mrtd is not None and len(self.expected_mrtd) != 48:
            raise ValueError("expected_mrtd must be 48 bytes")
        for idx, value in self.expected_rtmrs.items():
            if not 0 <= idx <= 3 or len(value) != 48:
                raise ValueError("expected_rtmrs: index 0..3 -> 48 bytes")
        unknown = set(self.accepted_tcb_statuses) - set(TCB_STATUSES)
        if unknown:
            raise ValueError(f"unknown TCB statuses {sorted(unknown)}")
