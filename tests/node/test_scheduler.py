"""The scheduler counts the placements it has just written before its informer shows them: two
ProcessSets scheduled back to back must not both land on the node that looked empty to both."""

from __future__ import annotations

from setpoint.client import Client
from setpoint.controllers.nodes import Scheduler
from setpoint.controllers.resources import PROCESSSETS
from tests.node.test_node_agent import processset
from tests.servers import ServerProcess


async def test_back_to_back_placements_spread_before_the_informer_catches_up(
        server: ServerProcess, namespace: str) -> None:
    async with Client(server.client_config()) as admin:
        await _back_to_back(admin, namespace)


async def _back_to_back(admin: Client, namespace: str) -> None:
    scheduler = Scheduler(admin)
    # Two ready nodes; the ProcessSets' informer is not started, so it shows none of the
    # scheduler's own writes: the widest form of the lag between a write and its watch event.
    scheduler.ready_nodes = lambda: ["n1", "n2"]  # type: ignore[method-assign]
    big = await admin.create(PROCESSSETS, processset("big", 3, node=None), namespace=namespace)
    small = await admin.create(PROCESSSETS, processset("small", 1, node=None), namespace=namespace)
    other = await admin.create(PROCESSSETS, processset("other", 1, node=None), namespace=namespace)
    # The informer lists them unscheduled, as it does until their events arrive.
    for obj in (big, small, other):
        scheduler.informer.cache.put(obj)

    await scheduler.reconcile(big)
    await scheduler.reconcile(small)
    assert (await admin.get(PROCESSSETS, "big", namespace=namespace))["spec"]["nodeName"] == "n1"
    assert (await admin.get(PROCESSSETS, "small", namespace=namespace))["spec"].get("nodeName") == "n2"
    await scheduler.reconcile(big)  # its stale copy again: placed already, not written again
    # small (1 replica) on n2 against big's 3 on n1: the next goes to n2 again.
    await scheduler.reconcile(other)
    assert (await admin.get(PROCESSSETS, "other", namespace=namespace))["spec"]["nodeName"] == "n2"
    await scheduler.reconcile(small)  # its stale copy: skipped as well

    # The informer catches up, then someone takes small off its node: it is placed again, on
    # the emptier node as the informer now shows it, not skipped as one placed already.
    for name in ("big", "small", "other"):
        scheduler.informer.cache.put(await admin.get(PROCESSSETS, name, namespace=namespace))
    cleared = await admin.patch(PROCESSSETS, "small", {"spec": {"nodeName": None}}, namespace=namespace)
    assert not cleared["spec"].get("nodeName")
    scheduler.informer.cache.put(cleared)
    await scheduler.reconcile(cleared)
    assert (await admin.get(PROCESSSETS, "small", namespace=namespace))["spec"].get("nodeName") == "n2"
