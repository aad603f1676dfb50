"""The contract between reconcilers and real subsystems.

A driver is written as observe-then-ensure: ``observe`` reads what actually is, ``ensure`` acts
only on the difference from what should be, so calling it twice does no harm. Every call that
changes something carries an :class:`OperationId` derived from the object (uid + generation +
action), the same on every retry, so a subsystem that can deduplicate will.

Failures are classified, because they call for different reactions:

- :class:`Transient`: try again soon, with backoff (a lost request, a refused connection). When
  ``uncertain`` is set the request may have been carried out (a timeout, a lost reply): the
  runtime observes again before it acts, instead of blindly resending.
- :class:`NotReady`: the subsystem said "not now" (busy, warming up, locked): retry later.
- :class:`Permanent`: retrying cannot help (bad input, unsupported): stop, mark the object
  failed, raise an alert.

How long to keep retrying is the driver's ``retry_policy`` (:mod:`setpoint.drivers.retry`).
Drivers are found as plugins through entry points (:mod:`setpoint.drivers.plugins`), and one that
lives in another process is reached through the REST bridge (:mod:`setpoint.drivers.rest`).
See docs/writing-a-driver.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

Obj = dict[str, Any]
ObservedT = TypeVar("ObservedT")


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
    def for_object(cls, obj: Obj, action: str) -> OperationId:
        meta = obj.get("metadata") or {}
        return cls(str(meta.get("uid", "")), int(meta.get("generation") or 0), action)

    def __str__(self) -> str:
        return f"{self.uid}/{self.generation}/{self.action}"


class Driver(Protocol[ObservedT]):
    """What a reconciler needs from a subsystem, for one kind of object. Optionally also a
    ``retry_policy`` attribute (a :class:`~setpoint.drivers.retry.RetryPolicy`)."""

    name: str

    async def observe(self, obj: Obj) -> ObservedT:
        """The actual state of what ``obj`` describes. Must not change anything."""
        ...

    async def ensure(self, obj: Obj, observed: ObservedT, op: OperationId) -> ObservedT:
        """Make the subsystem match ``obj``'s spec, acting only on what differs from
        ``observed``; returns the state after acting."""
        ...

    async def delete(self, obj: Obj, op: OperationId) -> None:
        """Remove everything ``obj`` caused; succeeds if there is nothing left to remove."""
        ...
