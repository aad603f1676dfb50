"""Random mixes of faults: the home always converges, and no device ever carries out the same
operation twice (at-most-once effects), through the REST bridge and through the plugin."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import ServerProcess
from tests.southbound.support import EXPECTED_EFFECTS, TRANSPORTS, assert_device_state, eventually, rig

DEVICE_IDS = ["thermostat", "garage", "lights", "kettle"]
FAULT_KINDS = ["drop_request", "drop_reply", "delay", "duplicate", "not_ready", "fail_midway"]

fault = st.fixed_dictionaries({
    "fault": st.sampled_from(FAULT_KINDS),
    "device": st.sampled_from([*DEVICE_IDS, "*"]),
    "methods": st.sampled_from([("PUT",), ("GET",), ("GET", "PUT")]),
    "count": st.integers(1, 3),
    "probability": st.sampled_from([1.0, 0.5]),
})
scenario = st.fixed_dictionaries({
    "faults": st.lists(fault, min_size=1, max_size=5),
    "replace": st.lists(st.sampled_from(DEVICE_IDS), max_size=2, unique=True),
    "seed": st.integers(0, 2**16),
})


async def run(server: ServerProcess, transport: str, sc: dict[str, Any]) -> None:
    async with rig(server, transport, seed=sc["seed"], drift_interval=0.2) as r:
        for f in sc["faults"]:
            seconds = 0.45 if f["fault"] == "delay" else 0.05  # a delay longer than the timeout
            await r.inject(f["fault"], device=f["device"], methods=f["methods"], count=f["count"],
                           probability=f["probability"], seconds=seconds)
        await r.create_home()
        await r.converged(timeout=40)
        for device in sc["replace"]:  # while the faults that are left still fire
            await r.replace(device)
        if sc["replace"]:
            await r.converged(timeout=40)

            async def reconfigured() -> bool:
                s = await r.state()
                return all(s["devices"][d]["spec"] and s["devices"][d]["phase"] == "Ready" for d in DEVICE_IDS)

            await eventually(reconfigured, timeout=40, what="replaced devices configured")
        await r.clear_faults()
        await r.converged(timeout=40)
        state = await r.state()
        assert_device_state(state)
        assert state["repeatedOperations"] == [], state
        for id, d in state["devices"].items():
            got, want = d["effects"], EXPECTED_EFFECTS[id]
            if id == "garage":  # a door stopped halfway runs its motor again; it arrives once
                assert got["movements"] == 1 and got["motorRuns"] >= 1, got
            else:
                assert got == want, (id, got, sc)
        for old in state["retired"]:  # a replaced unit had done its work at most once
            assert all(n <= 1 for n in old["executions"].values())


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sc=scenario)
def test_random_faults_converge_at_most_once(server: ServerProcess, transport: str, sc: dict[str, Any]) -> None:
    asyncio.run(run(server, transport, sc))
