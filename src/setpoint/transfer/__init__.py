"""How desired state travels from the API server to agents: watch (default), poll, NATS
interrupt and NATS JetStream command, behind the informer's one interface (see base.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from setpoint.transfer.base import Target, TransferStats, Transport
from setpoint.transfer.poll import PollTransport
from setpoint.transfer.watch import WatchTransport

TransportFactory = Callable[[], Transport]
"""Makes one transport per informer (a controller has one informer per kind it follows)."""

TRANSPORTS = ("watch", "poll", "interrupt", "command")

_default: ContextVar[TransportFactory | None] = ContextVar("setpoint_transfer", default=None)


def default_transport() -> Transport:
    """What an informer given no transport uses: the one set by :func:`use_transfer` in this
    context (``setpoint agent --transfer``, a test), else ``watch``."""
    factory = _default.get()
    return factory() if factory is not None else WatchTransport()


@contextlib.contextmanager
def use_transfer(factory: TransportFactory) -> Iterator[None]:
    """Every informer created in this context (and in tasks started from it) without a transport
    of its own uses ``factory``: one switch for a whole agent and all its controllers."""
    token = _default.set(factory)
    try:
        yield
    finally:
        _default.reset(token)


def transport_factory(name: str, *, poll_interval: float = 5.0, resync_period: float = 30.0,
                      nats_url: str | None = None, consumer: str | None = None) -> TransportFactory:
    """The factory for a transport by name, as ``--transfer`` names it.

    ``interrupt`` and ``command`` need ``nats_url``; ``command`` also a ``consumer`` name that
    stays the same across restarts of one agent (its durable JetStream consumers are named
    after it)."""
    if name == "watch":
        return WatchTransport
    if name == "poll":
        return lambda: PollTransport(interval=poll_interval)
    if name in ("interrupt", "command"):
        if not nats_url:
            raise ValueError(f"the {name} transfer needs a NATS server URL")
        if name == "interrupt":
            from setpoint.transfer.interrupt import InterruptTransport

            return lambda: InterruptTransport(nats_url, resync_period=resync_period)
        from setpoint.transfer.command import CommandTransport

        if not consumer:
            raise ValueError("the command transfer needs a consumer name (the agent's, stable across restarts)")
        return lambda: CommandTransport(nats_url, consumer=consumer)
    raise ValueError(f"unknown transfer {name!r}; expected one of {', '.join(TRANSPORTS)}")


__all__ = ["TRANSPORTS", "PollTransport", "Target", "TransferStats", "Transport", "TransportFactory",
           "WatchTransport", "default_transport", "transport_factory", "use_transfer"]
