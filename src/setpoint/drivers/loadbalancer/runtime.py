"""HAProxy's Runtime API on its admin socket: one command per connection, as ``socat`` sends them.

Only what the driver needs: read the servers' state and sessions, add a server, change its
state, turn its health check on, delete it. Every command's answer is checked, because HAProxy
answers errors as text on a successful connection ("No such server.", "Require 'admin' level.");
an unexpected answer is raised, never ignored, so a half-applied change is seen by the next
observation.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import io
from pathlib import Path
from typing import NamedTuple

from setpoint.agent.errors import Transient

TIMEOUT = 5.0
# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced, inherited, resolver and config maintenance.
_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN = 0x08 | 0x10 | 0x80
_OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}
# srv_check_state bits (HAProxy's CHK_ST_*).
_CHECK_CONFIGURED = 0x02
_CHECK_ENABLED = 0x04
# The connect errors that mean nothing will ever answer on this path again: the file is gone, or
# no process listens on it any more (a stale socket file). A refused permission or a timeout may
# pass (a process stopped for a while, a path being fixed), so those are only retried.
_GONE = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK}


class RuntimeAPIError(Transient):
    """The socket refused or HAProxy said no; the next sync observes again before acting."""

    def __init__(self, message: str, *, gone: bool = False, uncertain: bool = False, reason: str = "") -> None:
        super().__init__(message, uncertain=uncertain, reason=reason)
        self.gone = gone  # nothing listens on the socket's path any more: it will not come back


class Server(NamedTuple):
    """One line of ``show servers state``."""

    address: str
    port: int
    state: str  # UP, DOWN, STARTING, STOPPING, DRAIN, MAINT
    check_configured: bool  # the server was declared with ``check``
    check_enabled: bool  # and its health check runs (``enable health``)


class RuntimeAPI:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def command(self, cmd: str) -> str:
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                try:
                    writer.write(cmd.encode() + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
        except TimeoutError as e:
            raise RuntimeAPIError(f"HAProxy's admin socket {self.socket_path} did not answer within {TIMEOUT:g}s",
                                  uncertain=True, reason="AdminSocketUnreachable") from e
        except OSError as e:
            raise RuntimeAPIError(f"HAProxy's admin socket {self.socket_path}: {e.strerror or e}", uncertain=True,
                                  reason="AdminSocketUnreachable", gone=e.errno in _GONE) from e
        return data.decode(errors="replace")

    async def _expect(self, cmd: str, *ok: str) -> None:
        answer = (await self.command(cmd)).strip()
        if answer and not any(answer.startswith(o) for o in ok):
            raise RuntimeAPIError(f"HAProxy refused {cmd!r}: {answer}", reason="RuntimeAPIRefused")

    async def servers(self, backend: str) -> dict[str, Server]:
        """Server name -> its line of ``show servers state``."""
        text = await self.command(f"show servers state {backend}")
        out: dict[str, Server] = {}
        for line in text.splitlines():
            if not line or line.startswith("#") or line.strip() == "1":
                continue
            f = line.split()
            if len(f) < 19:
                if "Can't find backend" in line or "No such" in line:
                    raise RuntimeAPIError(f"HAProxy has no backend {backend}: {line}", reason="RuntimeAPIRefused")
                continue
            admin, op, check = int(f[6]), int(f[5]), int(f[13])
            state = "MAINT" if admin & _MAINT else "DRAIN" if admin & _DRAIN else _OP_STATES.get(op, "DOWN")
            out[f[3]] = Server(f[4], int(f[18]), state, bool(check & _CHECK_CONFIGURED),
                               bool(check & _CHECK_ENABLED))
        return out

    async def sessions(self, backend: str) -> dict[str, int]:
        """Server name -> current sessions (``scur`` of ``show stat``)."""
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: int(r["scur"] or 0) for r in rows
                if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}

    async def add_server(self, backend: str, name: str, address: str, port: int, options: str) -> None:
        """A new server: it starts in maintenance, its health check is turned on before it is made
        ready, so that a sync cut at any point never leaves a server serving unchecked (the next
        sync finds it in maintenance, or without its check, and finishes the work)."""
        await self._expect(f"add server {backend}/{name} {address}:{port} {options}", "New server registered")
        if "check" in options.split():
            await self.enable_health(backend, name)
        await self.set_state(backend, name, "ready")

    async def enable_health(self, backend: str, name: str) -> None:
        await self._expect(f"enable health {backend}/{name}")

    async def set_state(self, backend: str, name: str, state: str) -> None:
        await self._expect(f"set server {backend}/{name} state {state}")

    async def delete_server(self, backend: str, name: str) -> None:
        await self._expect(f"set server {backend}/{name} state maint")
        await self._expect(f"shutdown sessions server {backend}/{name}")
        await self._expect(f"del server {backend}/{name}", "Server deleted")
