"""Southbound drivers: the only code that touches real subsystems (processes, files, devices).

Drivers never touch the store: a reconciler reads desired state from its informer's cache, asks
its driver to make the subsystem match, and writes what the driver observed back as status.
"""

from setpoint.drivers.base import (
    Driver,
    DriverError,
    ErrorClass,
    NotReady,
    OperationId,
    Permanent,
    Transient,
)

__all__ = ["Driver", "DriverError", "ErrorClass", "NotReady", "OperationId", "Permanent", "Transient"]
