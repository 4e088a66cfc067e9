"""Serving errors: one status vocabulary for the server core, both front ends and the client.

Kept apart from the server modules so the REST and gRPC front ends, the batcher and the client can all
raise and map the same error without importing each other.
"""

from __future__ import annotations

from tfduch.errors import TfduchError

__all__ = ["ServingError", "StatusCode", "HTTP_STATUS"]


class StatusCode:
    """gRPC / TF Serving status code names (the values of ``grpc.StatusCode``'s names)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"


# TF Serving's status → HTTP code table (model_servers/http_server.cc).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


class ServingError(TfduchError):
    """A request failed with a TF Serving status: raised by the server core, re-raised by the client.

    ``code`` is the status name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...), the same on both sides, so
    callers can branch on it without importing gRPC.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
