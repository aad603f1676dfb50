"""Retry policy per error class: when attempts or the deadline are spent, the Home is marked
failed and an alert goes out (log, Event, webhook). Permanent errors stop at once."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
from setpoint_home.resources import HOMES

from setpoint.agent.alerts import Alert, FanOutAlertSink, MemoryAlertSink
from setpoint.agent.conditions import get_condition
from setpoint.agent.webhook import WebhookAlertSink
from setpoint.drivers.base import ErrorClass
from setpoint.drivers.retry import Backoff, RetryPolicy, RetryTracker
from tests.servers import ServerProcess
from tests.southbound.support import DEVICES, EVENTS, TRANSPORTS, Rig, eventually, rig
from tests.southbound.webhook_receiver import Receiver


async def failed_with(r: Rig, reason: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = await r.home()
        cond = get_condition(obj.get("status"), "Ready")
        return obj if cond is not None and cond["status"] == "False" and cond["reason"] == reason else None

    return await eventually(check, what=f"Home failed with {reason}")  # type: ignore[no-any-return]


async def warning_event(r: Rig, reason: str) -> None:
    async def check() -> bool:
        events = (await r.client.list(EVENTS, namespace=r.ns)).items
        return any(e["type"] == "Warning" and e["reason"] == reason for e in events)

    await eventually(check, what=f"Warning event {reason}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transient_budget_spent_alerts_by_webhook(server: ServerProcess, transport: str) -> None:
    policy = RetryPolicy(transient=Backoff(attempts=3, base=0.01, cap=0.05), deadline=None)
    async with Receiver() as receiver:
        memory = MemoryAlertSink()
        webhook = WebhookAlertSink(receiver.url, attempts=2, backoff=0.01)
        async with rig(server, transport, policy=policy, drift_interval=None,
                       alert_sink=FanOutAlertSink(memory, webhook)) as r:
            await r.inject("drop_request", device="kettle", count=None)  # the kettle is unreachable
            await r.create_home()
            obj = await failed_with(r, "RetryBudgetExhausted")
            assert "gave up after 4 Transient failures" in get_condition(obj["status"], "Ready")["message"]  # type: ignore[index]
            await warning_event(r, "RetryBudgetExhausted")
            assert [a.reason for a in memory.alerts] == ["RetryBudgetExhausted"]
            assert await webhook.drain(10)
            [body] = receiver.bodies
            assert body["reason"] == "RetryBudgetExhausted" and body["kind"] == "Home"
            assert body["name"] == "cottage" and body["namespace"] == r.ns and body["errorClass"] == "Transient"
            assert body["attempts"] == 4 and "kettle" in body["message"]
            state = await r.state()
            # 1 + 3 runtime attempts, each trying the kettle op_attempts times, then it stopped.
            assert state["requests"]["PUT kettle"] == 4 * r.driver.op_attempts
            # A change of the desired state brings it back with a fresh budget.
            await r.clear_faults()
            devices = [{**DEVICES[0], "settings": {"targetCelsius": 22}}, *DEVICES[1:]]
            await r.client.patch(HOMES, "cottage", {"spec": {"devices": devices}}, namespace=r.ns)
            await r.converged()
        await webhook.aclose()


async def test_not_ready_deadline(server: ServerProcess) -> None:
    """NotReady is not counted against attempts, but the total deadline bounds it."""
    policy = RetryPolicy(not_ready=Backoff(attempts=None, base=0.01, cap=0.05), deadline=0.8)
    async with rig(server, "rest", policy=policy, drift_interval=None) as r:
        await r.inject("not_ready", device="garage", count=None, seconds=0.05)
        await r.create_home()
        obj = await failed_with(r, "RetryDeadlineExceeded")
        assert "deadline 0.8s" in get_condition(obj["status"], "Ready")["message"]  # type: ignore[index]
        assert [a.reason for a in r.alerts.alerts] == ["RetryDeadlineExceeded"]
        assert r.ctl.stats.by_class["NotReady"] >= 5
        await warning_event(r, "RetryDeadlineExceeded")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_permanent_stops_at_once(server: ServerProcess, transport: str) -> None:
    """The device refuses the request (422: a thermostat where a kettle is declared): no retry."""
    async with rig(server, transport, drift_interval=None,
                   device_types={"thermostat": "kettle", "garage": "garageDoor", "lights": "lights",
                                 "kettle": "kettle"}) as r:
        await r.create_home()
        obj = await failed_with(r, "WrongDevice")
        assert "thermostat is a kettle" in get_condition(obj["status"], "Ready")["message"]  # type: ignore[index]
        assert [(a.reason, a.error_class) for a in r.alerts.alerts] == [("WrongDevice", "Permanent")]
        state = await r.state()
        assert state["requests"]["PUT thermostat"] == 1
        assert state["devices"]["kettle"]["effects"] == {"boilings": 1}  # the other devices were done


def test_tracker_backoff_and_retry_after() -> None:
    now = [0.0]
    t = RetryTracker(clock=lambda: now[0], rng=random.Random(1))
    p = RetryPolicy(transient=Backoff(attempts=5, base=0.1, cap=0.4, jitter=0),
                    not_ready=Backoff(attempts=None, base=1, cap=2, jitter=0), deadline=10)
    delays = [t.failed("k", 1, p, ErrorClass.TRANSIENT).delay for _ in range(5)]
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert t.failed("k", 1, p, ErrorClass.TRANSIENT).reason == "RetryBudgetExhausted"
    assert t.failed("k", 2, p, ErrorClass.TRANSIENT).delay == 0.1  # a new generation starts afresh
    assert t.failed("k", 2, p, ErrorClass.NOT_READY, retry_after=7.5).delay == 7.5  # Retry-After wins
    now[0] = 9.0
    assert t.failed("k", 2, p, ErrorClass.NOT_READY).delay == pytest.approx(1.0)  # cut to the deadline
    now[0] = 10.0
    assert t.failed("k", 2, p, ErrorClass.NOT_READY).reason == "RetryDeadlineExceeded"
    assert t.failed("j", 1, p, ErrorClass.PERMANENT).give_up


def _alert(i: int) -> Alert:
    return Alert(controller="c", kind="Home", namespace="ns", name=f"h{i}", uid=str(i), reason="R",
                 message="m", error_class="Transient", attempts=1)


async def test_webhook_queue_is_bounded_and_failures_counted() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookAlertSink(f"http://127.0.0.1:{port}/x", queue_size=2, attempts=2, backoff=0.01, timeout=1)
    for i in range(6):
        sink.alert(_alert(i))  # never blocks
    assert await sink.drain(10)
    assert sink.dropped >= 3 and sink.failed + sink.dropped == 6 and sink.sent == 0
    await sink.aclose()
    async with Receiver(status=400) as refusing:
        sink = WebhookAlertSink(refusing.url, attempts=3, backoff=0.01)
        sink.alert(_alert(1))
        assert await sink.drain(10)
        assert (sink.failed, refusing.requests) == (1, 1)  # a 4xx is not retried
        await sink.aclose()
