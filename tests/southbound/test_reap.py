"""``setpoint reap --driver rest``: the reaper asks a driver that lists what it made (the home
devices behind the REST bridge) and judges it against the Homes that exist."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tests.servers import ServerProcess
from tests.southbound.support import DEVICES, rig


async def test_reap_reports_and_releases_only_the_devices_of_a_gone_home(server: ServerProcess) -> None:
    async with rig(server, "rest") as r:
        r.hub.add("attic-lights", "lights")
        r.hub.add("shed-kettle", "kettle")
        put = await r.control.put("/v1/resources/attic-lights", headers={"Idempotency-Key": "gone/1/ensure"},
                                  json={"spec": {"type": "lights", "settings": {"on": True}},
                                        "owner": {"uid": "uid-of-a-deleted-home", "kind": "Home",
                                                  "namespace": r.ns, "name": "old-house"}})
        assert put.status_code == 200, put.text
        await r.control.put("/v1/resources/shed-kettle", headers={"Idempotency-Key": "by-hand"},
                            json={"spec": {"type": "kettle", "settings": {"on": False}}})
        await r.create_home()
        await r.converged()

        async def reap(*args: str) -> dict[str, Any]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "setpoint", "reap", "--no-cloud", "--driver", "rest",
                "--driver-option", f"base_url={r.sim.url}", "--owner-kind", "homes", "-o", "json",
                "--kubeconfig", str(server.data_dir / "kubeconfig.yaml"), *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            return json.loads(out)  # type: ignore[no-any-return]

        report = await reap()
        assert [(o["source"], o["id"], o["owner"]) for o in report["orphans"]] == \
            [("rest", "attic-lights", f"Home {r.ns}/old-house")], report
        assert report["examined"] == len(DEVICES) + 1, "the Home's devices and the orphan; not the unowned kettle"
        report = await reap("--delete", "--older-than", "0")
        assert report["deleted"] == ["rest attic-lights"], report
        state = (await r.control.get("/_sim/state")).json()["devices"]
        assert state["attic-lights"]["spec"] is None
        assert state["shed-kettle"]["spec"] is not None, "a device setpoint never configured was touched"
        assert all(state[d["name"]]["spec"] is not None for d in DEVICES), "a live Home's device was released"


def test_reap_refuses_a_driver_it_cannot_use_and_says_why(server: ServerProcess) -> None:
    import subprocess

    def reap(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "setpoint", "reap", "--no-cloud", *args, "--kubeconfig",
                               str(server.data_dir / "kubeconfig.yaml")], capture_output=True, text=True, timeout=60)

    r = reap("--driver", "no-such-driver", "--owner-kind", "homes")
    assert r.returncode == 2 and "no-such-driver" in r.stderr, r.stderr
    r = reap("--driver", "rest", "--driver-option", "base_url=http://127.0.0.1:9")
    assert r.returncode == 2 and "--owner-kind" in r.stderr, r.stderr
    r = reap("--driver", "rest", "--driver-option", "base_url", "--owner-kind", "homes")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr, r.stderr
    r = reap("--driver", "process", "--driver-option", "state_dir=/nonexistent", "--owner-kind", "processsets")
    assert r.returncode == 2 and "cannot list what it made" in r.stderr, r.stderr
    r = reap()
    assert r.returncode == 2 and "nothing to look at" in r.stderr, r.stderr
