from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from setpoint.transfer import TRANSPORTS, transport_factory, use_transfer
from setpoint.transfer.natsserver import NatsServer


@pytest.fixture(params=TRANSPORTS)
def transfer(request: pytest.FixtureRequest, nats_server: NatsServer) -> Iterator[str]:
    """Runs a test once per transport of desired state: every informer it makes (a controller's
    included) uses that transport. A controller's tests pass unchanged on each."""
    factory = transport_factory(request.param, poll_interval=0.1, resync_period=2.0, nats_url=nats_server.url,
                                consumer=f"test-{uuid.uuid4().hex[:8]}")
    with use_transfer(factory):
        yield request.param
