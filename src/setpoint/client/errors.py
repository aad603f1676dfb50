"""Errors the client raises: one class per Kubernetes ``Status`` reason, plus transport failures.

Callers branch on the class (``except Conflict: reread and retry``), never on message text. The
class comes from the ``reason`` of the server's ``Status`` body; when the body carries no reason
the client falls back to the HTTP code, the way client-go's ``apierrors`` does.

    ClientError
    ├── ConnectionFailed              no usable answer: refused, reset, TLS failure, timeout
    │   └── IdleTimeout               a watch stream sent no bytes within its idle timeout
    └── APIStatusError                the server answered with a failure Status
        ├── BadRequest (400)          ├── Gone (410)
        ├── Unauthorized (401)        │   └── Expired (410, reason Expired: relist)
        ├── Forbidden (403)           ├── Invalid (422, .causes)
        ├── NotFound (404)            ├── TooManyRequests (429)
        ├── AlreadyExists (409)       └── ServerError (5xx)
        ├── Conflict (409)                ├── ServiceUnavailable (503)
        └── (405, 406, 413, 415 as        └── Timeout (504, and 500 ServerTimeout)
             APIStatusError subclasses)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class ClientError(Exception):
    """Anything the setpoint client raises on purpose."""


class ConnectionFailed(ClientError):
    """No usable answer from any server: connection refused or reset, TLS failure, timeout."""


class IdleTimeout(ConnectionFailed):
    """A watch stream delivered no bytes (not even a bookmark) within its idle timeout."""


@dataclass(frozen=True, slots=True)
class Cause:
    """One reason a request was invalid, usually naming a field (``spec.size``)."""

    reason: str = ""
    message: str = ""
    field: str = ""


@dataclass(frozen=True, slots=True)
class StatusDetails:
    name: str = ""
    group: str = ""
    kind: str = ""
    uid: str = ""
    causes: tuple[Cause, ...] = ()
    retry_after_seconds: int | None = None

    @classmethod
    def from_dict(cls, d: Any) -> StatusDetails:
        if not isinstance(d, dict):
            return cls()
        raw_causes = d.get("causes")
        causes = tuple(
            Cause(str(c.get("reason", "")), str(c.get("message", "")), str(c.get("field", "")))
            for c in (raw_causes if isinstance(raw_causes, list) else ())
            if isinstance(c, dict)
        )
        retry = d.get("retryAfterSeconds")
        return cls(
            name=str(d.get("name", "")), group=str(d.get("group", "")), kind=str(d.get("kind", "")),
            uid=str(d.get("uid", "")), causes=causes,
            retry_after_seconds=retry if isinstance(retry, int) else None,
        )


class APIStatusError(ClientError):
    """The server answered with a failure ``Status``."""

    default_code: ClassVar[int] = 0

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: StatusDetails | None = None,
        *,
        status: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}" if message else f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details if details is not None else StatusDetails()
        self.status: dict[str, Any] = status if status is not None else {}
        # From the Retry-After header, else details.retryAfterSeconds.
        self.retry_after = retry_after if retry_after is not None else self.details.retry_after_seconds

    @property
    def causes(self) -> tuple[Cause, ...]:
        return self.details.causes


class BadRequest(APIStatusError):
    default_code = 400


class Unauthorized(APIStatusError):
    default_code = 401


class Forbidden(APIStatusError):
    default_code = 403


class NotFound(APIStatusError):
    default_code = 404


class MethodNotAllowed(APIStatusError):
    default_code = 405


class NotAcceptable(APIStatusError):
    default_code = 406


class AlreadyExists(APIStatusError):
    """409 with reason AlreadyExists: a create of a name that is taken. Not a Conflict."""

    default_code = 409


class Conflict(APIStatusError):
    """409: a stale resourceVersion or a failed precondition; re-read and try again."""

    default_code = 409


class Gone(APIStatusError):
    default_code = 410


class Expired(Gone):
    """410 with reason Expired: the revision asked for has been compacted; list again."""


class RequestEntityTooLarge(APIStatusError):
    default_code = 413


class UnsupportedMediaType(APIStatusError):
    default_code = 415


class Invalid(APIStatusError):
    """422: the object failed validation; ``causes`` names each offending field."""

    default_code = 422


class TooManyRequests(APIStatusError):
    default_code = 429


class ServerError(APIStatusError):
    """5xx: the server failed; usually worth retrying with backoff."""

    default_code = 500


class ServiceUnavailable(ServerError):
    default_code = 503


class Timeout(ServerError):
    """504 Timeout (or 500 ServerTimeout): the server gave up waiting; the outcome may be unknown."""

    default_code = 504


_BY_REASON: dict[str, type[APIStatusError]] = {
    "BadRequest": BadRequest,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "NotFound": NotFound,
    "MethodNotAllowed": MethodNotAllowed,
    "NotAcceptable": NotAcceptable,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "Gone": Gone,
    "Expired": Expired,
    "RequestEntityTooLarge": RequestEntityTooLarge,
    "UnsupportedMediaType": UnsupportedMediaType,
    "Invalid": Invalid,
    "TooManyRequests": TooManyRequests,
    "InternalError": ServerError,
    "ServiceUnavailable": ServiceUnavailable,
    "ServerTimeout": Timeout,
    "Timeout": Timeout,
}

_BY_CODE: dict[int, tuple[type[APIStatusError], str]] = {
    400: (BadRequest, "BadRequest"),
    401: (Unauthorized, "Unauthorized"),
    403: (Forbidden, "Forbidden"),
    404: (NotFound, "NotFound"),
    405: (MethodNotAllowed, "MethodNotAllowed"),
    406: (NotAcceptable, "NotAcceptable"),
    409: (Conflict, "Conflict"),
    410: (Gone, "Gone"),
    413: (RequestEntityTooLarge, "RequestEntityTooLarge"),
    415: (UnsupportedMediaType, "UnsupportedMediaType"),
    422: (Invalid, "Invalid"),
    429: (TooManyRequests, "TooManyRequests"),
    503: (ServiceUnavailable, "ServiceUnavailable"),
    504: (Timeout, "Timeout"),
}


def error_class(code: int, reason: str) -> tuple[type[APIStatusError], str]:
    """The exception class and the reason for a failure: by reason first, then by code."""
    cls = _BY_REASON.get(reason)
    if cls is not None:
        return cls, reason
    by_code = _BY_CODE.get(code)
    if by_code is not None:
        return by_code[0], reason or by_code[1]
    if code >= 500:
        return ServerError, reason or "InternalError"
    return APIStatusError, reason or "Unknown"


def from_status(
    code: int, body: Any, *, fallback_message: str = "", retry_after: float | None = None
) -> APIStatusError:
    """The typed error for an HTTP ``code`` and its decoded body (a ``Status``, or anything else)."""
    status: dict[str, Any] = body if isinstance(body, dict) and body.get("kind") == "Status" else {}
    raw_code = status.get("code")
    code = raw_code if isinstance(raw_code, int) and raw_code >= 400 else code
    cls, reason = error_class(code, str(status.get("reason") or ""))
    message = str(status.get("message") or fallback_message)
    return cls(code, reason, message, StatusDetails.from_dict(status.get("details")), status=status,
               retry_after=retry_after)

