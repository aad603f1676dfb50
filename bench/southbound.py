"""``python -m bench --only southbound``: convergence of 100 devices over a lossy network.

The home-automation example (``examples/home/``) at scale: 25 ``Home`` objects of 4 devices each
(thermostat, garage door, lights, kettle), 100 devices on one device simulator (a real HTTP
server on loopback), one Home controller driving them through the REST bridge. For each loss
rate (0 %, 10 %, 30 %) every device request is lost with that probability, and when it got
through its reply is lost with that probability too (the work done, the answer never seen).

Measured per loss rate, from the first Home created to every Home converged (Ready for its
generation, every device Ready):

- **convergence time**;
- **device requests**: what the REST bridge sent (GET, PUT), what the devices received, and the
  faults the network injected;
- what the driver did about them: uncertain outcomes, those a fresh observation showed were done
  (no resend), resends with the same operation id;
- **at-most-once check**: operations carried out twice by a device (must be 0) and kettle
  boilings (must be one per kettle).

The REST timeout (a lost request costs that long) and the retry policy are in ``TIMEOUT`` and
``POLICY``. The server is a fresh ``setpoint serve`` (SQLite); the simulator runs in a process of
its own (``python -m bench.southbound devices``), the controller in this one. Results go into
the run's JSON under ``southbound`` and a table to ``southbound.md``. ``--quick``: 20 devices,
0 % and 30 % only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

ROOT = Path(__file__).resolve().parent.parent
HOME_DIR = ROOT / "examples" / "home"
LOSS_RATES = (0.0, 0.1, 0.3, 0.5)
DOWN_SECONDS = 10.0  # the "device down, then back" row: one device unreachable this long from the start
DEVICES_PER_HOME = (("thermostat", "thermostat", {"targetCelsius": 21}),
                    ("garage", "garageDoor", {"position": "open"}),
                    ("lights", "lights", {"on": True, "brightness": 80}),
                    ("kettle", "kettle", {"on": True}))
TIMEOUT = 0.5  # seconds without an answer before a device request counts as lost
TRAVEL_SECONDS = 0.2  # the garage doors' travel time
CONVERGE_DEADLINE = 300.0
WORKERS = 16  # the Home controller's workers (25 Homes: some wait for one)
CONCURRENCY = 32  # device requests in flight at once (the REST driver's semaphore and connections)
ROUNDS = 3  # each case, median round reported (min and max beside it)


def _home_path() -> None:
    if str(HOME_DIR) not in sys.path:
        sys.path.insert(0, str(HOME_DIR))


def _devices_main(argv: list[str]) -> None:
    """The device simulator in a process of its own: sharing the controller's event loop, every
    retry the controller makes also delays the devices' answers, and the latency the adaptive
    timeout measures is then the bench's own load, not the network's."""
    import argparse
    import contextlib
    import json

    _home_path()
    from setpoint_home.devices import DeviceHub, FaultRule
    from setpoint_home.simulator import Simulator

    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", required=True, help="JSON {id: type}")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--down", default="", help="a device every request of which is lost until DELETE /_sim/faults")
    ap.add_argument("--travel-seconds", type=float, default=TRAVEL_SECONDS)
    a = ap.parse_args(argv)

    async def serve() -> None:
        hub = DeviceHub(travel_seconds=a.travel_seconds, seed=a.seed)
        for id, type_ in json.loads(a.devices).items():
            hub.add(id, type_)
        if a.loss:
            hub.inject(FaultRule("drop_request", count=None, probability=a.loss))
            hub.inject(FaultRule("drop_reply", count=None, probability=a.loss))
        if a.down:
            hub.inject(FaultRule("drop_request", device=a.down, count=None))
        async with Simulator(hub) as sim:
            print(f"device simulator at {sim.url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


async def scenario(url: str, token: str, n_devices: int, loss: float, seed: int,
                   down: float = 0.0) -> dict[str, Any]:
    _home_path()
    import json
    import re

    from setpoint_home.controller import HomeController, rest_driver
    from setpoint_home.resources import HOMES

    from setpoint.agent.alerts import MemoryAlertSink
    from setpoint.agent.conditions import is_converged
    from setpoint.client import Client, ClientConfig, Resource
    from setpoint.drivers.retry import Backoff, RetryPolicy

    if down and loss:
        raise ValueError("the device-down row runs without loss (its end clears every fault)")
    policy = RetryPolicy(transient=Backoff(attempts=1000, base=0.05, cap=2.0),
                         not_ready=Backoff(attempts=None, base=0.05, cap=2.0), deadline=CONVERGE_DEADLINE)
    homes = n_devices // len(DEVICES_PER_HOME)
    types: dict[str, str] = {}
    specs = {}
    for h in range(homes):
        devices = []
        for suffix, type_, settings in DEVICES_PER_HOME:
            id = f"h{h:02d}-{suffix}"
            types[id] = type_
            devices.append({"name": id, "type": type_, "settings": settings})
        specs[f"home-{h:02d}"] = devices
    desired = {d["name"]: d["settings"] for devices in specs.values() for d in devices}
    ready_at: dict[str, float] = {}
    ns = f"southbound-{int(loss * 100)}{'-down' if down else ''}-{seed}"
    alerts = MemoryAlertSink()
    sim = procs.Managed([sys.executable, "-m", "bench.southbound", "devices", "--devices", json.dumps(types),
                         "--seed", str(seed), "--loss", str(loss), "--travel-seconds", str(TRAVEL_SECONDS)]
                        + (["--down", "h00-thermostat"] if down else []),
                        re.compile(r"device simulator at (http://\S+)"), "devices",
                        cwd=ROOT)
    await asyncio.to_thread(sim.start)  # waits for its first line
    assert sim.match is not None
    sim_url = sim.match.group(1)
    back = False
    async with httpx.AsyncClient(base_url=sim_url, timeout=30) as control, \
            Client(ClientConfig(url, token=token)) as client:
        await client.create(Resource("", "v1", "namespaces", namespaced=False, kind="Namespace"),
                            {"metadata": {"name": ns}})
        # 32 device requests at once: with 64 the controller's event loop, the bottleneck here,
        # queued more answers and the measured latency (and the timeouts) rose; with the driver's
        # default 16 a device that is down held too many of the slots.
        driver = rest_driver(sim_url, timeout=TIMEOUT, retry_policy=policy, progress_poll=TRAVEL_SECONDS,
                             concurrency=CONCURRENCY)
        ctl = HomeController(client, driver, namespace=ns, workers=WORKERS, drift_interval=None, alert_sink=alerts)
        task = asyncio.create_task(ctl.run())
        try:
            sync_deadline = time.monotonic() + 30
            while not ctl.informer.has_synced:  # run() starts the informer
                if time.monotonic() > sync_deadline:
                    raise RuntimeError("the Home informer never synced")
                await asyncio.sleep(0.01)
            started = time.monotonic()
            for name, devices in specs.items():
                await client.create(HOMES, {"apiVersion": "home.example.com/v1", "kind": "Home",
                                            "metadata": {"name": name}, "spec": {"devices": devices}}, namespace=ns)
            deadline = started + CONVERGE_DEADLINE
            # Watched from the controller's own cache, and the devices' times read once at the
            # end (each device keeps when it last changed): polling the simulator and the server
            # from this process would take the event loop the controller measures latency on.
            while True:
                now = time.monotonic()
                if down and not back and now - started >= down:
                    (await control.delete("/_sim/faults")).raise_for_status()  # the device is back
                    back = True
                done = sum(1 for o in ctl.informer.list() if is_converged(o)
                           and (o.get("status") or {}).get("readyDevices") == len(DEVICES_PER_HOME))
                if done == homes:
                    break
                if alerts.alerts or now > deadline:
                    raise RuntimeError(f"{done}/{homes} Homes converged at {loss:.0%} loss; alerts: "
                                       f"{[a.message for a in alerts.alerts][:3]}")
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await driver.aclose()
        final = (await control.get("/_sim/state")).json()
        for id, settings in desired.items():
            d = final["devices"][id]
            if d["phase"] == "Ready" and d["spec"] is not None and d["spec"].get("settings") == settings:
                ready_at[id] = d["changedAt"] - started
    await asyncio.to_thread(sim.stop)
    effects = {id: d["effects"] for id, d in final["devices"].items()}
    boilings = [effects[f"h{h:02d}-kettle"].get("boilings", 0) for h in range(homes)]
    wrong = [id for id, d in final["devices"].items() if d["phase"] != "Ready" or d["spec"] is None]
    stats = driver.stats
    times = sorted(ready_at.values())
    return {
        "loss": loss, "down_s": down, "devices": homes * len(DEVICES_PER_HOME), "homes": homes,
        "converge_s": round(elapsed, 3),
        "device_p50_s": round(times[len(times) // 2], 3) if times else None,
        "device_p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3) if times else None,
        "bridge_requests": driver.bridge.requests,
        "device_requests": {m: final["requests"].get(m, 0) for m in ("GET", "PUT", "DELETE")},
        "requests_per_device": round(driver.bridge.requests / (homes * len(DEVICES_PER_HOME)), 2),
        "faults": dict(final["faultsFired"]),
        "sends": stats.sends, "resends_same_id": stats.resends, "uncertain": stats.uncertain,
        "op_retries": stats.op_retries,
        "confirmed_without_resend": stats.confirmed_after_uncertain,
        "reconciles": ctl.stats.reconciles, "uncertain_failures": ctl.retries.uncertain_outcomes,
        "repeated_operations": len(final["repeatedOperations"]),
        "kettle_boilings": {"min": min(boilings), "max": max(boilings)},
        "devices_not_as_desired": len(wrong),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    base = next((r["converge_s"] for r in rows if not r["loss"] and not r.get("down_s")), None)
    base_req = next((r["requests_per_device"] for r in rows if not r["loss"] and not r.get("down_s")), None)
    head = ("| loss | devices | converged in (÷ no loss) | per device p50 / p99 | bridge requests per device "
            "(÷ no loss) | device GET / PUT | lost req / reply | uncertain → confirmed, no resend "
            "| resends (same id) | repeated ops | boilings per kettle |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        f = r["faults"]
        what = f"{r['loss']:.0%}" + (f", a device down {r['down_s']:g} s" if r.get("down_s") else "")
        ratio = f" ({r['converge_s'] / base:.1f}x)" if base else ""
        req_ratio = f" ({r['requests_per_device'] / base_req:.1f}x)" if base_req else ""
        spread = f" [{min(r['rounds_s']):.2f}-{max(r['rounds_s']):.2f}]" if r.get("rounds_s") else ""
        lines.append(
            f"| {what} | {r['devices']} | {r['converge_s']:.2f} s{ratio}{spread} "
            f"| {r['device_p50_s']} / {r['device_p99_s']} s "
            f"| {r['requests_per_device']}{req_ratio} | {r['device_requests']['GET']} / {r['device_requests']['PUT']} "
            f"| {f.get('drop_request', 0)} / {f.get('drop_reply', 0)} | {r['uncertain']} → "
            f"{r['confirmed_without_resend']} | {r['resends_same_id']} | {r['repeated_operations']} "
            f"| {r['kettle_boilings']['min']}-{r['kettle_boilings']['max']} |")
    return head + "\n".join(lines) + (f"\n\nREST timeout: adaptive, capped at {TIMEOUT} s; garage doors travel "
                                      f"{TRAVEL_SECONDS} s.\n")


def run(b: Bench) -> dict[str, Any]:
    n_devices = 20 if b.a.quick else 100
    rates = (0.0, 0.3) if b.a.quick else LOSS_RATES
    s = procs.Setpoint(b.tmp / "southbound", b.a.setpoint_args.split())
    b.stack.enter_context(s)
    b.log(f"southbound: setpoint at {s.host}:{s.port}")
    url = f"http://{s.host}:{s.port}"
    crd = yaml.safe_load((HOME_DIR / "home-crd.yaml").read_text())
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {s.token}"}, timeout=30) as c:
        r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating the Home CRD: {r.status_code} {r.text[:300]}")
        deadline = time.monotonic() + 15
        while c.get("/apis/home.example.com/v1/homes?limit=1").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("homes never served")
            time.sleep(0.05)
    rows = []
    cases = [(loss, 0.0) for loss in rates] + ([] if b.a.quick else [(0.0, DOWN_SECONDS)])
    rounds = 1 if b.a.quick else ROUNDS
    for i, (loss, down) in enumerate(cases):
        runs = []
        for k in range(rounds):
            b.log(f"southbound: {n_devices} devices at {loss:.0%} loss"
                  + (f", one down for {down:g} s" if down else "") + f" (round {k + 1}/{rounds})")
            runs.append(asyncio.run(scenario(url, s.token, n_devices, loss, seed=i * 10 + k, down=down)))
            b.log(f"southbound: converged in {runs[-1]['converge_s']:.2f}s with {runs[-1]['bridge_requests']} "
                  "requests")
        runs.sort(key=lambda r: r["converge_s"])
        row = dict(runs[len(runs) // 2])  # the median round, its figures together
        row["rounds_s"] = [r["converge_s"] for r in runs]
        row["repeated_operations"] = max(r["repeated_operations"] for r in runs)  # 0 in every round, or shown
        rows.append(row)
    s.stop()
    md = markdown(rows)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "southbound.md").write_text(md)
    b.log("southbound:\n" + md)
    return {"runs": rows, "timeout_s": TIMEOUT, "travel_s": TRAVEL_SECONDS}


if __name__ == "__main__":
    if sys.argv[1:2] != ["devices"]:
        sys.exit("usage: python -m bench.southbound devices --devices JSON --seed N [--loss P] [--down ID]"
                 " (the bench itself runs with python -m bench --only southbound)")
    _devices_main(sys.argv[2:])
