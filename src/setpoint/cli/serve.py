"""``setpoint serve`` and ``setpoint node-token``: the control plane."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from setpoint.cli.app import app, console

if TYPE_CHECKING:
    from collections.abc import Callable

    import uvicorn

    from setpoint.server.app import Server, ServerOptions
    from setpoint.server.datadir import DataDirLock
    from setpoint.store.backend import Backend


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int | None) -> socket.socket:
    """Bind the listening socket first, so the printed URL is the one that is really served."""
    from setpoint.server.workers import bind_group

    try:
        sock = bind_group(host, port, 1)[0]
    except OSError as e:
        raise typer.BadParameter(str(e), param_hint="--listen") from None
    sock.set_inheritable(True)
    return sock


@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option(help="Where the store, tokens, policy and kubeconfig live.")]
    = Path(".setpoint"),
    listen: Annotated[str, typer.Option(
        help="HOST:PORT to listen on; default 127.0.0.1:6443, or a free port if 6443 is taken.")] = "",
    store: Annotated[str, typer.Option(help=(
        "Store URL: sqlite:///path.db (default: SQLite in the data directory), "
        "postgresql://user@host:port/db[?schema=name], etcd://host:port[,host:port...]."))] = "",
    tls_cert: Annotated[Path | None, typer.Option(
        help="TLS certificate (PEM), with --tls-key. Default: one made for this server "
             "(DATA_DIR/tls.crt), trusted by the kubeconfig it writes.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    tls_self_signed: Annotated[bool, typer.Option(
        "--tls-self-signed", hidden=True, help="The default now; accepted for old scripts.")] = False,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Serve plain HTTP instead of TLS; loopback listen addresses only. "
        "kubectl does not work then: it never sends a token over plain HTTP.")] = False,
    token_file: Annotated[Path | None, typer.Option(
        help="Bearer tokens, Kubernetes static token CSV (default: DATA_DIR/tokens.csv).")] = None,
    authorization_policy_file: Annotated[Path | None, typer.Option(
        help="ABAC policy, one JSON policy a line (default: DATA_DIR/policy.jsonl).")] = None,
    history_revisions: Annotated[int, typer.Option(
        help="Keep at least this many revisions of history (0: no limit by count).")] = 100_000,
    history_seconds: Annotated[float, typer.Option(
        help="Keep history for this many seconds (0: no limit by time).")] = 3600.0,
    compact_interval: Annotated[float, typer.Option(help="Seconds between compactions.")] = 60.0,
    watch_cache_window: Annotated[int, typer.Option(
        help="Events kept in memory for watch resumes.")] = 20_000,
    watcher_queue: Annotated[int, typer.Option(
        help="Events queued per watcher before it is fast-forwarded (newest state per key only).")] = 1_000,
    watch_fast_forward_keys: Annotated[int, typer.Option(
        help="A watcher behind on more objects than this is cut off and resumes (0: cut off at once).")] = 100_000,
    nats: Annotated[str, typer.Option(
        help="NATS server URL (nats://host:4222): publish interrupts and commands for agents that use "
             "--transfer interrupt or command.")] = "",
    request_header_timeout: Annotated[float, typer.Option(
        help="Seconds a connection has to send a request's headers (after it opens, or after its last "
             "response) before it is closed.")] = 10.0,
    max_connections_per_client: Annotated[int, typer.Option(
        help="Open connections one client address may hold; past it new ones are closed.")] = 512,
    nats_prefix: Annotated[str, typer.Option(
        help="First token of the NATS subjects and stream name: one per control plane sharing a NATS.")]
    = "setpoint",
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1_572_864,
    idempotency_ttl: Annotated[float, typer.Option(
        help="Seconds an Idempotency-Key is remembered.")] = 86_400.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    workers: Annotated[int, typer.Option(
        min=0, max=64,
        help="API server processes over the one SQLite store, which stays in this process with its "
             "single writer (0: serve the API in this process too). 1 takes the store's work off "
             "the API's core; more spread HTTP, validation and encoding over more cores. Each has "
             "its own watch cache, metrics and connection limit. Over PostgreSQL or etcd, run "
             "several servers instead.")] = 0,
) -> None:
    """Run the control plane: the API server over a revisioned store."""
    from setpoint.server.app import ServerOptions
    from setpoint.server.bootstrap import ensure_policy, ensure_tokens, write_kubeconfig
    from setpoint.server.settings import Settings
    from setpoint.store import open_backend
    from setpoint.store.sqlite import SQLiteBackend

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port_s = listen.rpartition(":") if listen else ("127.0.0.1", "", "")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_s) if port_s else None
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    if insecure_http and (tls_cert is not None or tls_self_signed):
        raise typer.BadParameter("--insecure-http serves no TLS: leave out the TLS options",
                                 param_hint="--insecure-http")
    if insecure_http and not _is_loopback(host):
        console.print(f"[red]refusing to serve plain HTTP on {host}[/red]: bearer tokens would cross the "
                      "network in clear text. --insecure-http is for loopback addresses only; leave it out "
                      "to serve TLS with a certificate made for this server, or give --tls-cert/--tls-key.",
                      highlight=False)
        raise typer.Exit(2)
    if nats:
        from setpoint.transfer.subjects import Subjects

        try:
            Subjects(nats_prefix)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--nats-prefix") from None
    try:
        backend = open_backend(store, data_dir)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--store") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    _private_dir(data_dir)
    if workers and not isinstance(backend, SQLiteBackend):
        raise typer.BadParameter("--workers is for the embedded SQLite store; over PostgreSQL or etcd, run "
                                 "several `setpoint serve` instead", param_hint="--workers")
    # Before anything is written: a second server on this data directory must leave the first
    # one's files (kubeconfig, certificate) as they are.
    lock = _lock_data_dir(data_dir, backend)
    if tls_cert is None and not insecure_http:
        from setpoint.server.tls import ensure_self_signed

        tls_cert, tls_key = ensure_self_signed(data_dir, host)
    tls = tls_cert is not None and tls_key is not None
    if token_file is None:
        token_file, admin_token = ensure_tokens(data_dir)
    else:
        admin_token = ""
    if authorization_policy_file is None:
        authorization_policy_file = ensure_policy(data_dir)
    if workers:
        from setpoint.server.workers import bind_group

        try:
            sockets = bind_group(host, port, workers)
        except OSError as e:
            lock.release()
            raise typer.BadParameter(str(e), param_hint="--listen") from None
    else:
        try:
            sockets = [_bind(host, port)]
        except typer.BadParameter:
            lock.release()
            raise
    bound_port = sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{url_host}:{bound_port}"
    options = ServerOptions(
        token_file=token_file, policy_file=authorization_policy_file,
        history_revisions=history_revisions, history_seconds=history_seconds,
        compact_interval=compact_interval, watch_cache_window=watch_cache_window,
        watcher_queue=watcher_queue, watch_fast_forward_keys=watch_fast_forward_keys, nats_url=nats or None,
        nats_prefix=nats_prefix, header_timeout=request_header_timeout,
        max_connections_per_client=max_connections_per_client,
        idempotency_ttl=idempotency_ttl,
        settings=Settings(max_body_bytes=max_body_bytes, max_object_bytes=max_body_bytes),
        server_address=f"{url_host}:{bound_port}",
    )
    kubeconfig = write_kubeconfig(data_dir, url, admin_token, tls_cert if tls else None)
    # The socket already listens, so the URL is good as soon as the store and cache are up.
    def ready() -> None:
        # What startup built lives as long as the server: keep it out of every collection.
        gc.freeze()
        _announce(url, kubeconfig, admin_token, tls_cert if tls else None)

    options.on_ready = ready
    # A request allocates a few hundred container objects; with the default threshold (700)
    # the collector would run several times per request.
    gc.set_threshold(20_000, 50, 100)
    # The store's writer thread needs the interpreter lock for a moment per batch (to take the
    # queued writes and to hand back the results). With the default 5 ms switch interval it
    # got it only when the event loop went idle, so commits waited on the loop and the loop on
    # commits; at 0.2 ms the writer keeps the disk busy while the loop keeps the CPU busy.
    sys.setswitchinterval(0.0002)
    try:
        if workers:
            code = _supervise(backend, data_dir, sockets, options, ready, tls_cert if tls else None,
                              tls_key if tls else None, log_level)
            if code:
                raise typer.Exit(code)
        else:
            from setpoint.server.app import Server

            _serve_http(Server(backend, options), sockets, tls_cert if tls else None, tls_key if tls else None,
                        log_level)
    finally:
        lock.release()


def _serve_http(server: Server, sockets: list[socket.socket], tls_cert: Path | None, tls_key: Path | None,
                log_level: str, on_serving: Callable[[uvicorn.Server], None] | None = None) -> None:
    """Serve ``server`` on the bound ``sockets`` until SIGTERM or SIGINT."""
    import uvicorn
    import uvloop

    from setpoint.server.protocol import protocol_for

    config = uvicorn.Config(
        server.app, loop="uvloop", http=protocol_for(server), lifespan="on", access_log=False, interface="asgi3",
        log_level=log_level, timeout_graceful_shutdown=3,
        # setpoint does not trust X-Forwarded-* headers (no proxy-aware logic), so skip the middleware.
        proxy_headers=False,
        ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
    )

    class _Uvicorn(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            server.begin_shutdown()
            await super().shutdown(sockets)

    userver = _Uvicorn(config)
    if on_serving is not None:
        on_serving(userver)
    uvloop.run(userver.serve(sockets=sockets))


def _supervise(backend: Backend, data_dir: Path, sockets: list[socket.socket], options: ServerOptions,
               ready: Callable[[], None], tls_cert: Path | None, tls_key: Path | None, log_level: str) -> int:
    import os

    import uvloop

    from setpoint.server.workers import Supervisor, WorkerConfig, options_to_plain

    plain = options_to_plain(options)

    def config(store_socket: str, index: int) -> WorkerConfig:
        # One publisher is enough: every worker sees every event (the others say where it publishes).
        return WorkerConfig(
            store_socket=store_socket, listen_fd=-1, ready_fd=-1, index=index, supervisor_pid=os.getpid(),
            tls_cert=str(tls_cert) if tls_cert else None, tls_key=str(tls_key) if tls_key else None,
            log_level=log_level, options={**plain, "nats_publish": index == 0},
        )

    supervisor = Supervisor(backend, data_dir, sockets, config, ready)
    return uvloop.run(supervisor.run())


def _stop_with_parent(pid: int) -> None:
    """A worker gets SIGTERM when its supervisor dies, however it dies (Linux's parent-death
    signal), so that no worker outlives it even before its store connection is up."""
    import ctypes
    import os
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != pid:  # it died before the signal was asked for
        raise typer.Exit(1)


@app.command("serve-worker", hidden=True)
def serve_worker() -> None:
    """One API server process of `setpoint serve --workers N` (started by it; reads its config
    from stdin)."""
    import os

    import msgspec

    from setpoint.server.app import Server
    from setpoint.server.workers import WorkerConfig, options_from_plain
    from setpoint.store.remote import RemoteBackend

    cfg = msgspec.json.decode(sys.stdin.buffer.read(), type=WorkerConfig)
    _stop_with_parent(cfg.supervisor_pid)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s worker {cfg.index} %(name)s: %(message)s")
    sock = socket.socket(fileno=cfg.listen_fd)
    backend = RemoteBackend(cfg.store_socket)
    userver: list[uvicorn.Server] = []

    def ready() -> None:
        gc.freeze()
        os.write(cfg.ready_fd, b"r")
        os.close(cfg.ready_fd)
        lost = backend.lost
        assert lost is not None

        def stop(_: object) -> None:
            logging.getLogger("setpoint.server").warning("the store service is gone; stopping")
            for u in userver:
                u.should_exit = True

        lost.add_done_callback(stop)

    options = options_from_plain(cfg.options, on_ready=ready)
    gc.set_threshold(20_000, 50, 100)
    _serve_http(Server(backend, options), [sock], Path(cfg.tls_cert) if cfg.tls_cert else None,
                Path(cfg.tls_key) if cfg.tls_key else None, cfg.log_level, on_serving=userver.append)


def _lock_data_dir(data_dir: Path, backend: object) -> DataDirLock:
    """The data directory's lock, and the database file's when it lives elsewhere (SQLite only:
    servers over PostgreSQL or etcd are meant to run side by side)."""
    from setpoint.server.datadir import LOCK_FILE, DataDirLock, DataDirLocked
    from setpoint.store.sqlite import SQLiteBackend

    if not isinstance(backend, SQLiteBackend):
        return DataDirLock()
    paths = [data_dir / LOCK_FILE]
    if backend.path.resolve().parent != data_dir.resolve():
        paths.append(backend.path.with_name(backend.path.name + ".lock"))
    try:
        return DataDirLock(*paths).acquire()
    except DataDirLocked as e:
        stop = f"Stop it first (kill {e.pid})" if e.pid else "Stop it first"
        console.print(f"[red]cannot start[/red]: {e}. {stop}, or give another --data-dir.", highlight=False)
        raise typer.Exit(1) from None


def _private_dir(data_dir: Path) -> None:
    """The data directory holds the store, the tokens and the TLS key: the server's alone (0700)."""
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            data_dir.chmod(0o700)
        except OSError as e:
            console.print(f"[red]the data directory {data_dir} is open to other users (mode {mode:o}) and cannot "
                          f"be made private[/red]: {e.strerror}", highlight=False)
            raise typer.Exit(2) from None


@app.command("node-token")
def node_token(
    node: Annotated[str, typer.Argument(help="Node name the agent will register as.")],
    data_dir: Annotated[Path, typer.Option(help="The server's data directory.")] = Path(".setpoint"),
) -> None:
    """Create credentials for an agent and write a kubeconfig for it.

    The agent may then write only its own Node and Lease and the status of objects assigned to
    its node.
    """
    import yaml

    from setpoint.server.bootstrap import add_node_token, write_kubeconfig

    admin = data_dir / "kubeconfig.yaml"
    if not admin.exists():
        console.print(f"[red]{admin} not found[/red]: run `setpoint serve --data-dir {data_dir}` first.")
        raise typer.Exit(2)
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority")
    token = add_node_token(data_dir / "tokens.csv", node)
    path = write_kubeconfig(data_dir, cluster["server"], token, Path(ca) if ca else None,
                            user=f"system:node:{node}", filename=f"kubeconfig-node-{node}.yaml")
    console.print(str(path), highlight=False)


def _announce(url: str, kubeconfig: Path, token: str, ca: Path | None) -> None:
    console.print(f"setpoint serving at [bold]{url}[/bold]", highlight=False)
    console.print(f"kubeconfig: {kubeconfig}", highlight=False)
    auth = f"--cacert {shlex.quote(str(ca))} " if ca is not None else ""
    auth += f'-H "Authorization: Bearer {token}" ' if token else ""
    console.print("try:", highlight=False)
    if shutil.which("kubectl"):
        console.print(f"  kubectl --kubeconfig {kubeconfig} get namespaces", highlight=False)
    else:
        console.print(f"  curl -s {auth}{url}/api/v1/namespaces", highlight=False)
    console.print(f"  curl -sN {auth}'{url}/api/v1/namespaces?watch=1'", highlight=False)
    sys.stdout.flush()
