"""``setpoint agent`` and ``setpoint controller-manager``: the processes that act."""

from __future__ import annotations

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


def _run(coro_factory) -> None:  # type: ignore[no-untyped-def]
    import uvloop

    try:
        uvloop.run(coro_factory())
    except KeyboardInterrupt:
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
) -> None:
    """Run the node agent: register the node, heartbeat, supervise its ProcessSets."""
    from setpoint.client import Client
    from setpoint.node import NodeAgent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node = node or socket.gethostname()
    config = _client_config(kubeconfig, server)
    directory = state_dir or Path(".setpoint") / f"agent-{node}"

    async def main() -> None:
        async with Client(config) as client:
            await NodeAgent(client, node, directory, workers=workers, heartbeat=heartbeat,
                            lease_duration=lease_duration).run()

    console.print(f"agent for node [bold]{node}[/bold] (state in {directory})", highlight=False)
    _run(main)


@app.command("controller-manager")
def controller_manager(
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
    identity: Annotated[str, typer.Option(help="This replica's name in leader election.")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the scheduler and node lifecycle controllers (leader-elected: run several)."""
    from setpoint.client import Client
    from setpoint.controllers.nodes import ControllerManager

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = _client_config(kubeconfig, server)
    ident = identity or f"{socket.gethostname()}-{os.getpid()}"

    async def main() -> None:
        async with Client(config) as client:
            await ControllerManager(client, ident).run()

    _run(main)

