"""The ``Home`` controller: every device of a Home in its desired state, whatever the network does.

It is a :class:`~setpoint.drivers.reconciler.DriverController`: observe every device, PUT only
those that differ (with an operation id per Home generation and device), look again after an
uncertain outcome, retry under the driver's policy, report each device in status. It checks the
devices again every ``drift_interval`` seconds (a device replaced by a fresh one is configured
again) and, with a finalizer, deconfigures them when the Home is deleted.

Run it against a server and the simulator::

    python -m setpoint_home.simulator --port 8123 &
    setpoint apply -f examples/home/home-crd.yaml
    python -m setpoint_home.controller --endpoint http://127.0.0.1:8123 &
    setpoint apply -f examples/home/home.yaml --wait
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from setpoint.agent import Result
from setpoint.client import Client, ClientConfig
from setpoint.drivers.reconciler import DriverController
from setpoint.drivers.resources import READY, ResourceSetDriver
from setpoint.drivers.rest import RestDriver
from setpoint_home.resources import HOMES, home_resources

__all__ = ["HOMES", "HomeController", "rest_driver"]


def rest_driver(endpoint: str, **kw: Any) -> RestDriver:
    """The REST bridge to a device hub at ``endpoint``, mapping Homes to devices."""
    return RestDriver(endpoint, resources=home_resources, **kw)


class HomeController(DriverController):
    resource = HOMES
    finalizer = "home.example.com/devices"
    name = "homes"

    def __init__(self, client: Client, driver: ResourceSetDriver, **kw: Any) -> None:
        super().__init__(client, driver, **kw)

    def status_for(self, obj: dict[str, Any], observed: Any) -> Result:
        devices = []
        for name, r in sorted(observed.items()):
            entry: dict[str, Any] = {"name": name, "phase": r.phase}
            if r.status:
                entry["actual"] = r.status
            devices.append(entry)
        ready = sum(1 for d in devices if d["phase"] == READY)
        return Result(status={"devices": devices, "readyDevices": ready},
                      message=f"{ready}/{len(devices)} devices as desired")


async def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m setpoint_home.controller", description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="http://127.0.0.1:8123", help="the device hub's REST driver endpoint")
    ap.add_argument("--kubeconfig", default=None)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds before a device request counts as lost")
    ap.add_argument("--webhook", default=None, help="post alerts as JSON to this URL")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from setpoint.agent.alerts import AlertSink, FanOutAlertSink, LogAlertSink
    from setpoint.agent.webhook import WebhookAlertSink

    sink: AlertSink = LogAlertSink()
    if a.webhook:
        sink = FanOutAlertSink(sink, WebhookAlertSink(a.webhook))
    driver = rest_driver(a.endpoint, timeout=a.timeout)
    async with Client(ClientConfig.from_kubeconfig(a.kubeconfig)) as client:
        try:
            await HomeController(client, driver, alert_sink=sink, orphan_sweep_interval=60.0).run()
        finally:
            await driver.aclose()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
