"""The contract between reconcilers and real subsystems.

A driver is written as observe-then-ensure: ``observe`` reads what actually is, ``ensure`` acts
only on the difference from what should be, so calling it twice does no harm. Every call that
changes something carries an :class:`OperationId` derived from the object (uid + generation +
action), the same on every retry, so a subsystem that can deduplicate will.

Failures are classified (Transient, possibly ``uncertain``; NotReady; Permanent), because they call
for different reactions: see :mod:`setpoint.agent.errors`.

The error classes and :class:`OperationId` are defined in :mod:`setpoint.agent.errors` (the runtime
that retries owns them) and re-exported here. How long to keep retrying is the driver's
``retry_policy`` (:mod:`setpoint.agent.retry`, also importable as ``setpoint.drivers.retry``).
Drivers are found as plugins through entry points (:mod:`setpoint.drivers.plugins`), and one that
lives in another process is reached through the REST bridge (:mod:`setpoint.drivers.rest`).
See docs/writing-a-driver.md.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from setpoint.agent.errors import DriverError, ErrorClass, NotReady, OperationId, Permanent, Transient
from setpoint.types import Object

Obj = Object  # the name drivers have used since the first release
ObservedT = TypeVar("ObservedT")


class Driver(Protocol[ObservedT]):
    """What a reconciler needs from a subsystem, for one kind of object. Optionally also a
    ``retry_policy`` attribute (a :class:`~setpoint.agent.retry.RetryPolicy`), and
    ``observes_in_ensure = True`` when ``ensure(obj, None, op)`` reads each part of the object
    itself right before acting on it: the reconciler then skips the separate ``observe``, so that
    one part's slow or lost read delays that part only, not every other part's changes."""

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


__all__ = ["Driver", "DriverError", "ErrorClass", "NotReady", "Obj", "OperationId", "Permanent", "Transient"]
