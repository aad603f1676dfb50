"""AWS failures in setpoint's classes. Throttling and server errors are Transient (backoff with
jitter); a connection lost or timed out after sending is Transient and *uncertain* (the request
may have been carried out: observe before acting again); a dependency not there or not gone yet
is NotReady; invalid parameters and exceeded limits are Permanent."""

from __future__ import annotations

from typing import Any

from setpoint.agent.errors import DriverError, NotReady, Permanent, Transient

_TRANSIENT = ("Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled", "SlowDown",
              "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
              "PriorRequestNotComplete", "IncorrectState")
_NOT_READY = ("DependencyViolation", "InvalidVpcID.NotFound", "InvalidSubnetID.NotFound",
              "InvalidGroup.NotFound", "IncorrectInstanceState", "ResourceInUse", "BucketNotEmpty")


def classify(error: Exception, action: str) -> DriverError:
    """``error`` raised by boto3 while doing ``action``, as a DriverError. Messages never carry
    credentials: botocore's texts name the operation and the code, not the request's signature."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(error, ClientError):
        info: dict[str, Any] = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{action}: {code}: {info.get('Message', '')}"
        if code in _NOT_READY or (code.endswith(".NotFound") and "Dependency" in code):
            return NotReady(text, retry_after=2.0, reason=code.replace(".", ""))
        if code in _TRANSIENT or status >= 500 or status == 429:
            return Transient(text, reason=code.replace(".", "") or "ServerError")
        return Permanent(text, reason=code.replace(".", "") or "Rejected")
    if isinstance(error, (ConnectionClosedError, ReadTimeoutError)):
        return Transient(f"{action}: {error}", uncertain=True, reason="OutcomeUnknown")
    if isinstance(error, EndpointConnectionError):
        return Transient(f"{action}: {error}", reason="Unreachable")
    if isinstance(error, NoCredentialsError):
        return Permanent(f"{action}: no AWS credentials (environment, profile or instance role)",
                         reason="NoCredentials")
    if isinstance(error, BotoCoreError):
        return Transient(f"{action}: {error}", uncertain=True, reason="OutcomeUnknown")
    raise error
