"""OpenAI-shaped errors: what the proxy answers when something goes wrong.

Every failure becomes ``{"error": {"message", "type", "param", "code"}}`` with the
status OpenAI would use; no traceback or internal detail beyond the one-line message
of a cmlp error ever reaches the HTTP client.
"""

from __future__ import annotations

import logging

from cmlp import errors as E

log = logging.getLogger("cmlp.proxy")


class ApiError(Exception):
    """An HTTP error answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_exception(exc: BaseException, *, prompt_param: str = "prompt") -> ApiError:
    """Map what the client (or the chat template) raised to the answer OpenAI would give."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, E.ContextTooLong):
        return invalid(str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, E.ChatTemplateError):
        return invalid(str(exc), param="messages", code="invalid_chat_template")
    if isinstance(exc, E.InvalidRequestError):
        return invalid(str(exc))
    if isinstance(exc, E.ServerBusy):
        return ApiError(
            503, f"The server is busy, try again later: {exc}", type="server_error", code="server_busy"
        )
    if isinstance(exc, E.AttestError):
        # Stage 0 no longer matches the manifest: nothing was sent, and nothing will be.
        log.error("attestation of stage 0 failed: %s", exc)
        return ApiError(
            503, f"The pipeline failed attestation: {exc}", type="server_error", code="attestation_failed"
        )
    if isinstance(exc, (E.CmlpError, OSError)):
        return ApiError(
            503, f"The pipeline is unavailable: {exc}", type="server_error", code="pipeline_unavailable"
        )
    log.error("internal error in the proxy", exc_info=exc)
    return ApiError(500, "Internal server error.", type="server_error", code="internal_error")
