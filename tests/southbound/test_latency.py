"""The REST bridge's timeout follows the measured latency: the cap until enough answers were seen,
then a multiple of a high percentile, never under the floor, and a stall does not set it alone."""

from __future__ import annotations

import pytest

from setpoint.drivers.latency import AdaptiveTimeout
from tests.servers import ServerProcess
from tests.southbound.support import rig
from tests.southbound.test_failure_modes import effects


def test_the_cap_until_it_has_learned_then_a_multiple_of_the_recent_answers() -> None:
    t = AdaptiveTimeout(0.5, floor=0.05, factor=3.0, warmup=8)
    for _ in range(7):
        t.observe(0.02)
        assert t.current == 0.5, "learned from too few answers"
    t.observe(0.02)
    assert t.current == pytest.approx(0.06)
    for _ in range(200):
        t.observe(0.001)
    assert t.current == 0.05, "under the floor"
    for _ in range(200):
        t.observe(1.0)
    assert t.current == 0.5, "over the cap"


def test_one_stall_does_not_set_the_timeout() -> None:
    t = AdaptiveTimeout(5.0, floor=0.01, factor=3.0, percentile=0.95, window=200)
    for i in range(200):
        t.observe(0.4 if i == 100 else 0.01)
    assert t.current == pytest.approx(0.03)


def test_bad_settings_are_refused() -> None:
    for kw in ({"floor": 0.0}, {"floor": 1.0}, {"factor": 0.5}, {"percentile": 0.0}):
        with pytest.raises(ValueError):
            AdaptiveTimeout(0.5, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["rest", "plugin"])
async def test_a_lost_request_is_retried_within_the_reconcile(server: ServerProcess, transport: str) -> None:
    """A packet lost on one device costs that device a short wait, not the Home a failed reconcile
    and a trip through the runtime's backoff; and still no effect twice."""
    async with rig(server, transport, drift_interval=None) as r:
        await r.inject("drop_request", device="kettle", methods=("PUT",), count=2)
        await r.create_home()
        await r.converged()
        assert r.driver.stats.op_retries >= 2
        assert r.ctl.stats.by_class.get("Transient", 0) == 0, "a lost packet failed the whole reconcile"
        assert not r.hub.repeated_operations()
        assert effects(await r.state())["kettle"]["boilings"] == 1


async def test_a_listing_waits_the_configured_timeout_not_the_learned_one(server: ServerProcess) -> None:
    """One resource's requests teach the timeout; the listing of every resource, a different
    request, waits the configured timeout and does not fail for being slower."""
    from setpoint.drivers.base import Transient

    async with rig(server, "rest", drift_interval=None) as r:
        bridge = r.driver.bridge  # type: ignore[attr-defined]
        for _ in range(30):
            await bridge.get("kettle")
        learned = bridge.timeout.current
        assert learned < 0.15, f"learned {learned}s from answers of a few ms"
        await r.inject("delay", methods=("GET",), count=2, seconds=0.2)  # between learned and cap (0.3 s)
        with pytest.raises(Transient):
            await bridge.get("kettle")  # one resource: the learned timeout applies
        assert len(await bridge.list()) >= 4  # the listing: the cap applies
