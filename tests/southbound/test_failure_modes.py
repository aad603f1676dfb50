"""Each failure mode of the source material, with the device simulator, through the REST bridge and
through the in-process plugin: the devices end as desired and no effect happens twice."""

from __future__ import annotations

import pytest
from setpoint_home.resources import HOMES

from setpoint.drivers.resources import Owner, RemoteResource
from tests.servers import ServerProcess
from tests.southbound.support import (
    DEVICES,
    EXPECTED_EFFECTS,
    TRANSPORTS,
    Rig,
    assert_device_state,
    eventually,
    rig,
)

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


async def finished(r: Rig) -> dict:  # type: ignore[type-arg]
    await r.converged()
    state = await r.state()
    assert_device_state(state)
    assert state["repeatedOperations"] == [], state["repeatedOperations"]
    return state


def effects(state: dict) -> dict:  # type: ignore[type-arg]
    return {id: d["effects"] for id, d in state["devices"].items()}


async def test_no_faults(server: ServerProcess, transport: str) -> None:
    async with rig(server, transport) as r:
        await r.create_home()
        state = await finished(r)
        assert effects(state) == EXPECTED_EFFECTS
        assert state["requests"].get("PUT kettle") == 1


async def test_request_lost(server: ServerProcess, transport: str) -> None:
    """1. The message never reaches the device: timeout, observe, send again (same operation id)."""
    async with rig(server, transport) as r:
        for device in ("kettle", "garage", "lights"):
            await r.inject("drop_request", device=device, count=2)
        await r.create_home()
        state = await finished(r)
        assert effects(state) == EXPECTED_EFFECTS
        assert state["faultsFired"]["drop_request"] == 6
        assert state["requests"]["PUT kettle"] == 3  # two lost, one carried out
        assert r.driver.stats.resends >= 6  # the same operation id every time
        assert list(state["devices"]["kettle"]["executions"].values()) == [1]


async def test_not_ready(server: ServerProcess, transport: str) -> None:
    """2. The device answers "not now" (503 + Retry-After): retried later, not counted as failures."""
    async with rig(server, transport) as r:
        await r.inject("not_ready", count=8, seconds=0.05)
        await r.create_home()
        state = await finished(r)
        assert effects(state) == EXPECTED_EFFECTS
        assert state["faultsFired"]["not_ready"] == 8
        assert r.ctl.stats.by_class.get("NotReady", 0) >= 2
        assert r.ctl.stats.by_class.get("Transient", 0) == 0
        assert not r.alerts.alerts


async def test_failed_midway(server: ServerProcess, transport: str) -> None:
    """3. The device starts and fails part way: sent again, it finishes only what is missing."""
    async with rig(server, transport) as r:
        await r.inject("fail_midway", count=4)
        await r.create_home()
        state = await finished(r)
        assert state["faultsFired"]["fail_midway"] == 4
        got = effects(state)
        # Two bulbs were switched before the failure, the two others after: each once.
        assert got["lights"] == EXPECTED_EFFECTS["lights"]
        assert got["kettle"] == {"boilings": 1}  # the trip at 60 °C did not boil
        assert got["thermostat"] == {"adjustments": 1}
        assert got["garage"] == {"motorRuns": 2, "movements": 1}  # stopped halfway, then all the way


async def test_reply_lost(server: ServerProcess, transport: str) -> None:
    """4. The device does the work, the acknowledgement is lost: the driver observes before acting
    again, sees the work done, and sends nothing more."""
    async with rig(server, transport) as r:
        await r.inject("drop_reply")  # the first PUT of each device
        await r.inject("drop_reply")
        await r.inject("drop_reply")
        await r.inject("drop_reply")
        await r.create_home()
        state = await finished(r)
        assert state["faultsFired"]["drop_reply"] == 4
        assert effects(state) == EXPECTED_EFFECTS
        for device in ("kettle", "thermostat", "lights", "garage"):
            assert state["requests"][f"PUT {device}"] == 1, (device, state["requests"])
        assert r.driver.stats.uncertain == 4
        assert r.driver.stats.confirmed_after_uncertain == 4


async def test_late_and_duplicated_requests(server: ServerProcess, transport: str) -> None:
    """A request that arrives after the controller gave up on it, and one the network delivers
    twice: the device recognises the operation id and does the work once."""
    async with rig(server, transport) as r:
        await r.inject("delay", device="kettle", seconds=0.6)  # longer than the request timeout
        await r.inject("duplicate", device="lights")
        await r.inject("duplicate", device="thermostat")
        await r.create_home()
        state = await finished(r)

        async def delayed_arrived() -> bool:
            return (await r.state())["requests"].get("PUT kettle", 0) >= 2

        await eventually(delayed_arrived, what="the late request")
        state = await r.state()
        assert effects(state) == EXPECTED_EFFECTS
        assert state["repeatedOperations"] == []
        assert state["faultsFired"] == {"delay": 1, "duplicate": 2}


async def test_device_replaced(server: ServerProcess, transport: str) -> None:
    """5. A device is replaced by a fresh one that remembers nothing: the controller notices on its
    next look, sends the last command again with the same operation id, and the new device, having
    no record of it, carries it out."""
    async with rig(server, transport, drift_interval=0.2) as r:
        await r.create_home()
        before = await finished(r)
        old_kettle_ops = set(before["devices"]["kettle"]["executions"])
        await r.replace("kettle")
        await r.replace("lights")

        async def reconfigured() -> dict | None:  # type: ignore[type-arg]
            s = await r.state()
            return s if all(s["devices"][d]["phase"] == "Ready" and s["devices"][d]["spec"]
                            for d in ("kettle", "lights")) else None

        await eventually(reconfigured, what="replacements configured")
        state = await finished(r)
        assert effects(state) == EXPECTED_EFFECTS  # the new units did it once each
        assert {d["id"]: d["effects"] for d in state["retired"]} == {
            "kettle": EXPECTED_EFFECTS["kettle"], "lights": EXPECTED_EFFECTS["lights"]}
        assert set(state["devices"]["kettle"]["executions"]) == old_kettle_ops  # same operation id
        assert state["devices"]["kettle"]["serial"] != next(d["serial"] for d in state["retired"])
        # Untouched devices were only looked at.
        assert state["requests"]["PUT thermostat"] == 1


async def test_spec_change_is_a_new_operation(server: ServerProcess, transport: str) -> None:
    """A new generation is a new operation id: the kettle boils again, other devices that did not
    change are not sent anything."""
    async with rig(server, transport) as r:
        await r.create_home(devices=[d for d in DEVICES if d["name"] != "kettle"]
                            + [{"name": "kettle", "type": "kettle", "settings": {"on": False}}])
        await r.converged()
        obj = await r.home()
        devices = obj["spec"]["devices"]
        devices[-1]["settings"] = {"on": True}
        devices[0]["settings"] = {"targetCelsius": 23}
        await r.client.patch(HOMES,
                             "cottage", {"spec": {"devices": devices}}, namespace=r.ns)
        await r.converged()
        state = await r.state()
        assert state["devices"]["kettle"]["effects"] == {"boilings": 1}
        assert state["devices"]["thermostat"]["effects"] == {"adjustments": 2}
        assert state["requests"]["PUT garage"] == 1 and state["requests"]["PUT lights"] == 1
        assert len(state["devices"]["kettle"]["executions"]) == 2
        assert state["repeatedOperations"] == []


async def test_deletion_and_orphans(server: ServerProcess, transport: str) -> None:
    """Deleting a Home deconfigures its devices (finalizer); a device left configured by a Home
    that no longer exists is found through the list call and released; unowned ones are left alone."""
    async with rig(server, transport, orphan_sweep_interval=0.2) as r:
        r.hub.add("attic-lights", "lights")
        r.hub.add("shed-kettle", "kettle")
        put = await r.control.put("/v1/resources/attic-lights", headers={"Idempotency-Key": "gone/1/ensure"},
                                  json={"spec": {"type": "lights", "settings": {"on": True}},
                                        "owner": {"uid": "uid-of-a-deleted-home", "kind": "Home"}})
        assert put.status_code == 200
        await r.control.put("/v1/resources/shed-kettle", headers={"Idempotency-Key": "by-hand"},
                            json={"spec": {"type": "kettle", "settings": {"on": False}}})
        await r.create_home()
        await r.converged()

        async def released() -> bool:
            return (await r.state())["devices"]["attic-lights"]["spec"] is None

        await eventually(released, what="orphan released")
        assert r.ctl.released == ["attic-lights"]
        await r.client.delete(HOMES, "cottage", namespace=r.ns)

        async def deconfigured() -> bool:
            s = await r.state()
            return all(s["devices"][d["name"]]["spec"] is None for d in DEVICES)

        await eventually(deconfigured, what="devices deconfigured")
        state = await r.state()
        assert state["devices"]["shed-kettle"]["spec"] is not None  # never ours
        assert {d: effects(state)[d] for d in EXPECTED_EFFECTS} == EXPECTED_EFFECTS  # deletion moved nothing


async def test_an_owner_that_appears_while_the_driver_lists_keeps_its_resources(
        server: ServerProcess, transport: str) -> None:
    """The sweep lists the subsystem against the owners it knows; one created meanwhile (with
    its first resource) is no orphan."""
    async with rig(server, transport) as r:
        await eventually(lambda: r.ctl.informer.has_synced, what="the controller's informer synced")
        listed = r.driver.orphans

        async def listing_while_an_owner_appears(live: set[str]) -> list[RemoteResource]:
            found = await listed(live)
            uid = (await r.create_home())["metadata"]["uid"]
            assert uid not in live
            await eventually(lambda: uid in {o["metadata"]["uid"] for o in r.ctl.informer.list()},
                             what="the informer sees the new Home")
            return [*found, RemoteResource(id="attic-fan", owner=Owner(uid=uid, kind="Home"))]

        r.driver.orphans = listing_while_an_owner_appears  # type: ignore[method-assign]
        assert await r.ctl.sweep_orphans() == []


async def test_what_a_pass_confirmed_is_not_read_again_while_a_sibling_moves(server: ServerProcess,
                                                                             transport: str) -> None:
    """The garage door takes time: the passes that wait for it do not read the devices already
    confirmed by the same operation; once all are done, a drift check reads them all again."""
    async with rig(server, transport, drift_interval=None, travel_seconds=0.3) as r:
        await r.create_home()
        state = await finished(r)
        assert state["requests"]["GET garage"] >= 2  # read until it arrived
        for device in ("thermostat", "lights", "kettle"):
            assert state["requests"][f"GET {device}"] == 1, (device, state["requests"])
        # A drift check after convergence reads everything afresh: a device replaced behind the
        # driver's back is found (a second reconcile of the same generation).
        r.ctl.queue.add(f"{r.ns}/cottage")
        await eventually(lambda: _read_again(r), timeout=10, what="every device read again by the next pass")


async def _read_again(r: Rig) -> bool:
    requests = (await r.state())["requests"]
    return all(requests.get(f"GET {d}", 0) >= 2 for d in ("thermostat", "lights", "kettle"))


async def test_a_lost_request_is_read_once_then_sent_again(server: ServerProcess, transport: str) -> None:
    """The read that finds a lost request's work not done is also the next attempt's reading."""
    async with rig(server, transport, drift_interval=None) as r:
        await r.inject("drop_request", device="kettle", count=1)
        await r.create_home()
        state = await finished(r)
        assert state["requests"]["PUT kettle"] == 2
        assert state["requests"]["GET kettle"] == 2  # before the first PUT, after its loss
        assert state["devices"]["kettle"]["effects"] == EXPECTED_EFFECTS["kettle"]
