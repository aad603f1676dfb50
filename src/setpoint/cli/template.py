"""``setpoint template``: files rendered from setpoint objects, with consul-template's habits.

    setpoint template -t haproxy.cfg.j2:/etc/haproxy/haproxy.cfg:"systemctl reload haproxy"

Each ``-t SRC:DEST[:COMMAND]`` renders the Jinja2 template SRC into DEST (atomically) whenever an
object it read changes, and runs COMMAND when DEST's content changed. ``--wait MIN[:MAX]``
coalesces bursts; ``--once`` renders once and exits; ``--dry`` prints each new render instead of
writing it (and keeps watching, unless ``--once``); ``--exec CMD`` supervises a child process and
signals it when a file changed. See docs/templates.md.

A command's fate is not recorded: when this process dies after writing a file but before its
command succeeded, the next one finds the content unchanged and does not run the command
(consul-template behaves the same). The ``Template`` kind records it in status instead.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from setpoint.cli.agent import KubeconfigOpt, ServersOpt, _client_config, _run
from setpoint.cli.app import app, console

if TYPE_CHECKING:
    import asyncio

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?\Z")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``500ms``, ``2s``, ``1m``, ``1h`` or plain seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (500ms, 2s, 1m, or seconds)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wait(text: str) -> tuple[float, float]:
    """``MIN[:MAX]``; without MAX, four times MIN, as consul-template defaults it."""
    lo, _, hi = text.partition(":")
    wait_min = _option_duration(lo, "--wait")
    wait_max = _option_duration(hi, "--wait") if hi else 4 * wait_min
    if wait_max < wait_min:
        raise typer.BadParameter(f"{text!r}: MAX must not be below MIN", param_hint="'--wait'")
    return wait_min, wait_max


def _option_duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except typer.BadParameter as e:
        raise typer.BadParameter(e.message, param_hint=f"'{option}'") from None


def parse_spec(text: str) -> tuple[Path, Path, str]:
    """``SRC:DEST[:COMMAND]`` (the command may itself contain colons)."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise typer.BadParameter(f"-t {text!r}: expected SRC:DEST or SRC:DEST:COMMAND")
    return Path(parts[0]), Path(parts[1]), parts[2] if len(parts) > 2 else ""


def _signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise typer.BadParameter(f"unknown signal {name!r}") from None


@app.command()
def template(
    templates: Annotated[list[str], typer.Option(
        "--template", "-t", help="SRC:DEST[:COMMAND]: render SRC into DEST, run COMMAND when DEST changed. "
                                 "Repeat for several templates.")],
    once: Annotated[bool, typer.Option(help="Render every template once, run the commands, and exit.")] = False,
    dry: Annotated[bool, typer.Option(help="Print each new render (after a line '> DEST') instead of writing "
                                           "it; run no command. Keeps watching unless --once.")] = False,
    wait: Annotated[str, typer.Option(
        help="MIN[:MAX]: render once changes have been quiet for MIN, and at most MAX after the first "
             "(default MAX: 4 x MIN). A burst of changes is one render.")] = "0",
    exec_: Annotated[str, typer.Option("--exec", help="A command (split like a shell would, but run without "
                                                       "one) to run as a child once the files are rendered; "
                                                       "it is sent --exec-reload-signal when a file changed, "
                                                       "and its exit ends this command with its code.")] = "",
    exec_reload_signal: Annotated[str, typer.Option(help="Signal for the --exec child on a change.")] = "SIGHUP",
    exec_kill_signal: Annotated[str, typer.Option(help="Signal to stop the --exec child with.")] = "SIGTERM",
    exec_kill_timeout: Annotated[str, typer.Option(
        help="How long the --exec child may take to exit after --exec-kill-signal before its process "
             "group is sent SIGKILL.")] = "30s",
    namespace: Annotated[str, typer.Option(help="The namespace templates read by default.")] = "default",
    perms: Annotated[str, typer.Option(help="Mode of the files written, in octal.")] = "0644",
    command_timeout: Annotated[str, typer.Option(help="How long a COMMAND may run before it is killed.")] = "30s",
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Render files from setpoint objects whenever what they read changes (consul-template's habits)."""
    from setpoint.templates import Engine, TemplateConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if dry and exec_:
        raise typer.BadParameter("--dry runs no command; leave out --exec (or --dry)", param_hint="'--exec'")
    wait_min, wait_max = parse_wait(wait)
    timeout = _option_duration(command_timeout, "--command-timeout")
    kill_timeout = _option_duration(exec_kill_timeout, "--exec-kill-timeout")
    try:
        mode = int(perms, 8)
    except ValueError:
        raise typer.BadParameter(f"--perms {perms!r} is not an octal mode") from None
    reload_sig, kill_sig = _signal(exec_reload_signal), _signal(exec_kill_signal)
    configs: dict[str, TemplateConfig] = {}
    for spec in templates:
        src, dest, command = parse_spec(spec)
        try:
            source = src.read_text()
        except OSError as e:
            console.print(f"[red]cannot read template {src}[/red]: {e.strerror}", highlight=False)
            raise typer.Exit(2) from None
        configs[str(dest)] = TemplateConfig(
            name=str(src), source=source, destination=None if dry else dest, mode=mode,
            command="" if dry else command, command_timeout=timeout, wait_min=wait_min, wait_max=wait_max,
            namespace=namespace)
    config = _client_config(kubeconfig, server)
    status = {"code": 0}

    async def main() -> None:
        import asyncio

        from setpoint.client import Client

        printed: dict[str, str] = {}

        def output(key: str, text: str) -> None:
            if printed.get(key) == text:
                return  # a render equal to the last one printed, like a file left as it was
            printed[key] = text
            sys.stdout.write(f"> {key}\n{text}")
            sys.stdout.flush()

        async with Client(config) as client:
            child: asyncio.subprocess.Process | None = None
            writes = {"n": 0}

            def outcome(key: str, o: object) -> None:
                n = sum(e.outcome.writes for e in engine.entries.values())
                if child is not None and child.returncode is None and n != writes["n"]:
                    child.send_signal(reload_sig)
                writes["n"] = n

            engine = Engine(client, on_outcome=outcome, on_output=output)
            try:
                for key, cfg in configs.items():
                    engine.put(key, cfg)
                for entry in list(engine.entries.values()):
                    await entry.first_done.wait()
                failed = [e for e in engine.entries.values() if not e.outcome.ok]
                for e in failed:
                    console.print(f"[red]{e.outcome.reason}[/red]: {e.outcome.message}", highlight=False)
                if once:
                    status["code"] = 1 if failed else 0
                    return
                if exec_:
                    # Started directly (no shell in between), so that the signals reach it; in a
                    # session (and process group) of its own, so that what it started can be
                    # killed with it, and a terminal's Ctrl-C reaches it as the kill signal, once.
                    try:
                        child = await asyncio.create_subprocess_exec(*shlex.split(exec_), start_new_session=True)
                    except OSError as e:
                        console.print(f"[red]cannot start --exec {exec_!r}[/red]: {e.strerror}", highlight=False)
                        status["code"] = 127
                        return
                    status["code"] = await child.wait()  # the child's end is ours, as with consul-template
                    return
                await asyncio.Event().wait()  # until SIGTERM or Ctrl-C
            finally:
                if child is not None and child.returncode is None:
                    await _stop(child, kill_sig, kill_timeout)
                await engine.close()

    _run(main)
    raise typer.Exit(status["code"])


async def _stop(child: asyncio.subprocess.Process, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to the --exec child; after ``timeout``, SIGKILL its process group."""
    import asyncio

    from setpoint.templates.command import kill_group

    with contextlib.suppress(ProcessLookupError):
        child.send_signal(sig)
    try:
        async with asyncio.timeout(timeout):
            await child.wait()
        return
    except TimeoutError:
        console.print(f"[red]the --exec child did not exit {timeout:g}s after {sig.name}[/red]: killing it",
                      highlight=False)
    except asyncio.CancelledError:  # a second SIGTERM or Ctrl-C: no more waiting
        kill_group(child.pid)
        raise
    kill_group(child.pid)
    await child.wait()
