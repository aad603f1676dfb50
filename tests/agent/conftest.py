from __future__ import annotations

from collections.abc import Iterator

import pytest

from setpoint.transfer import transport_factory, use_transfer


@pytest.fixture(params=["watch", "poll"])
def transfer(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test once per transport of desired state: every informer it makes (a controller's
    included) uses that transport. A controller's tests pass unchanged on each."""
    with use_transfer(transport_factory(request.param, poll_interval=0.1)):
        yield request.param
