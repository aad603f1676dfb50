"""API errors as Kubernetes ``Status`` objects.

Clients (kubectl, client-go, the Python client) branch on ``code`` and ``reason``, and print
``message``; 422s carry ``details.causes`` naming the offending field. Every failure the server
means to report is one of these classes; anything else is a bug and becomes a 500.
"""

from __future__ import annotations

from typing import Any, ClassVar


class APIError(Exception):
    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        causes: list[tuple[str, str, str]] | None = None,
        details_name: str | None = None,
        details_kind: str | None = None,
        details_group: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.causes = causes or []
        self.details_name = details_name
        self.details_kind = details_kind
        self.details_group = details_group
        self.retry_after = retry_after

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details: dict[str, Any] = {}
        if self.details_name is not None:
            details["name"] = self.details_name
        if self.details_group is not None:
            details["group"] = self.details_group
        if self.details_kind is not None:
            details["kind"] = self.details_kind
        if self.causes:
            details["causes"] = [
                {"reason": r, "message": m, "field": f} for r, m, f in self.causes
            ]
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            body["details"] = details
        return body


class BadRequest(APIError):
    code = 400
    reason = "BadRequest"


class Unauthorized(APIError):
    code = 401
    reason = "Unauthorized"


class Forbidden(APIError):
    code = 403
    reason = "Forbidden"


class NotFound(APIError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(APIError):
    code = 405
    reason = "MethodNotAllowed"


class NotAcceptable(APIError):
    code = 406
    reason = "NotAcceptable"


class Conflict(APIError):
    code = 409
    reason = "Conflict"


class AlreadyExists(APIError):
    code = 409
    reason = "AlreadyExists"


class Gone(APIError):
    code = 410
    reason = "Gone"


class Expired(APIError):
    """410 with reason Expired: a resourceVersion or continue token older than the kept history."""

    code = 410
    reason = "Expired"


class RequestEntityTooLarge(APIError):
    code = 413
    reason = "RequestEntityTooLarge"


class UnsupportedMediaType(APIError):
    code = 415
    reason = "UnsupportedMediaType"


class Invalid(APIError):
    code = 422
    reason = "Invalid"


class TooManyRequests(APIError):
    code = 429
    reason = "TooManyRequests"


class InternalError(APIError):
    code = 500
    reason = "InternalError"


class ServiceUnavailable(APIError):
    code = 503
    reason = "ServiceUnavailable"


class Timeout(APIError):
    code = 504
    reason = "Timeout"
