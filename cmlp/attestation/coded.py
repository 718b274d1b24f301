"""Stable error codes for the confidential-VM verifiers (transport.md 5.6-5.8).

Every rejection is a :class:`CodedVerificationFailed` (a VerificationFailed,
so callers that only know the generic hierarchy still see it) whose detail
reads ``"<CODE>: reason"`` like the reference; ``.code`` holds the code.
"""

from __future__ import annotations

from cmlp.errors import VerificationFailed


class CodedVerificationFailed(VerificationFailed):
    def __init__(self, code: str, reason: str):
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


def fail(code: str, reason: str) -> CodedVerificationFailed:
    return CodedVerificationFailed(code, reason)


def error_code(exc: BaseException) -> str:
    """The stable code of a verifier error (a generic one for uncoded errors)."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    return type(exc).__name__.upper()
