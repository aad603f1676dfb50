"""How southbound work fails, and the id that makes its retries safe.

Failures are classified, because they call for different reactions:

- :class:`Transient`: try again soon, with backoff (a lost request, a refused connection). When
  ``uncertain`` is set the request may have been carried out (a timeout, a lost reply): the
  runtime observes again before it acts, instead of blindly resending.
- :class:`NotReady`: the subsystem said "not now" (busy, warming up, locked): retry later.
- :class:`Permanent`: retrying cannot help (bad input, unsupported): stop, mark the object
  failed, raise an alert.

Every call that changes something carries an :class:`OperationId` derived from the object
(uid + generation + action), the same on every retry, so a subsystem that can deduplicate will.

These live in the agent layer because the controller runtime decides what each class means for
retries (:mod:`setpoint.agent.retry`); drivers raise them (``setpoint.drivers`` re-exports them),
so the agent never needs to import a driver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from setpoint.types import Object


class ErrorClass(enum.Enum):
    TRANSIENT = "Transient"
    NOT_READY = "NotReady"
    PERMANENT = "Permanent"


class DriverError(Exception):
    error_class: ErrorClass = ErrorClass.TRANSIENT

    def __init__(self, message: str, *, retry_after: float | None = None, uncertain: bool = False,
                 reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.uncertain = uncertain
        self.reason = reason or type(self).__name__


class Transient(DriverError):
    error_class = ErrorClass.TRANSIENT


class NotReady(DriverError):
    error_class = ErrorClass.NOT_READY


class Permanent(DriverError):
    error_class = ErrorClass.PERMANENT


@dataclass(frozen=True, slots=True)
class OperationId:
    """Stable across retries of the same change, different for the next change."""

    uid: str
    generation: int
    action: str

    @classmethod
    def for_object(cls, obj: Object, action: str) -> OperationId:
        meta = obj.get("metadata") or {}
        return cls(str(meta.get("uid", "")), int(meta.get("generation") or 0), action)

    def __str__(self) -> str:
        return f"{self.uid}/{self.generation}/{self.action}"
