"""Errors as the OpenAI API writes them: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

__all__ = ["APIError", "error_body"]

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request answered with ``status`` and an OpenAI-style error body.

    Args:
        status: the HTTP status code.
        message: what is wrong, for the client.
        param: the request field at fault, if one is.
        code: a short machine-readable code, e.g. ``"queue_full"``.

    Examples:
        >>> raise APIError(400, "n=2: expected n=1", "n")
    """

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI-style JSON body of an error: ``{"error": {"message", "type", "param",
    "code"}}``, ``type`` chosen by the status (``"invalid_request_error"`` for any other).

    Args:
        status: the HTTP status code.
        message: what is wrong, for the client.
        param: the request field at fault, if one is.
        code: a short machine-readable code.

    Examples:
        >>> error_body(429, "busy", code="queue_full")["error"]["type"]
        'rate_limit_error'
    """
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
