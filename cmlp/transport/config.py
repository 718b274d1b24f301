"""Session configuration (transport.md section 6.1); RetryPolicy (6.2) lives in cmlp.retry."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Optional

from cmlp.attestation.base import ExpectedMeasurements
from cmlp.attestation.role import Role
from cmlp.errors import HandshakeFailed
from cmlp.retry import RetryPolicy
from cmlp.transport.wire import MAX_PAYLOAD_SIZE

__all__ = ["RetryPolicy", "SecurityProfile", "SessionConfig"]

log = logging.getLogger(__name__)
_warned_unpinned = False


class SecurityProfile(enum.Enum):
    PRODUCTION = "production"
    DEVELOPMENT = "development"


@dataclass(frozen=True)
class SessionConfig:
    """Knobs of one SecureChannel.

    ``io_timeout`` is a cmlp addition: the default deadline (seconds) of each
    send and receive after the handshake (None: block, as the reference does).
    ``allow_unattested_peer`` is the asymmetric-attestation switch: accept a
    peer whose hello carries no attestation document (a host orchestrator
    without a TEE); it must be enabled explicitly.  The reference's
    ``retry_policy`` field (read only by its ``connect_with_retry``) is not
    carried: connectors take a :class:`cmlp.retry.RetryPolicy` themselves.
    """

    max_payload_size: int = MAX_PAYLOAD_SIZE
    handshake_timeout: float = 30.0
    expected_measurements: Optional[ExpectedMeasurements] = None
    require_measurements: bool = True
    security_profile: SecurityProfile = SecurityProfile.PRODUCTION
    io_timeout: Optional[float] = None
    allow_unattested_peer: bool = False
    # pipeline role binding (cmlp.attestation.role): the role this side attests, and the
    # role the peer's document must attest; None = bare nonce, as the reference
    own_role: Optional[Role] = None
    peer_role: Optional[Role] = None

    def __post_init__(self):
        if not isinstance(self.max_payload_size, int) or self.max_payload_size <= 0:
            raise HandshakeFailed("max_payload_size must be > 0")
        if self.max_payload_size > MAX_PAYLOAD_SIZE:
            raise HandshakeFailed(f"max_payload_size must be <= {MAX_PAYLOAD_SIZE}")
        if not self.handshake_timeout or self.handshake_timeout <= 0:
            raise HandshakeFailed("handshake_timeout must be > 0")
        if self.io_timeout is not None and self.io_timeout <= 0:
            raise HandshakeFailed("io_timeout must be > 0 or None")

    @classmethod
    def development(cls, **overrides) -> "SessionConfig":
        """Defaults with the Development profile and ``require_measurements=False``."""
        overrides.setdefault("security_profile", SecurityProfile.DEVELOPMENT)
        overrides.setdefault("require_measurements", False)
        return cls(**overrides)

    def with_measurements(self, measurements: Optional[ExpectedMeasurements]) -> "SessionConfig":
        return replace(self, expected_measurements=measurements)

    def replace(self, **changes) -> "SessionConfig":
        return replace(self, **changes)

    def validate_measurements(self) -> None:
        """The fail-closed gate run before any I/O (section 6.1 table).

        Stricter than the reference (transport.md 11.11): the Production
        profile also refuses an *empty* measurement map, which pins nothing.
        """
        if self.security_profile is SecurityProfile.PRODUCTION:
            if self.allow_unattested_peer and self.expected_measurements is None:
                return  # a host peer without a TEE: there is nothing to pin
            if not self.expected_measurements or len(self.expected_measurements) == 0:
                raise HandshakeFailed(
                    "production security profile requires expected_measurements (non-empty); "
                    "pin the peer's measurements or use the development profile"
                )
            return
        if self.expected_measurements is not None:
            return
        if self.require_measurements:
            raise HandshakeFailed("require_measurements is set but expected_measurements is None")
        global _warned_unpinned
        if not _warned_unpinned:  # once per process: every channel would repeat it
            _warned_unpinned = True
            log.warning(
                "no expected measurements configured: peer identities are not pinned (development profile)"
            )
