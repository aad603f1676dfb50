"""HAProxy's Runtime API on its admin socket: one command per connection, as ``socat`` sends them.

Only what the driver needs: read the servers' state and sessions, add a server, change its
state, delete it. Every command's answer is checked, because HAProxy answers errors as text on a
successful connection ("No such server.", "Require 'admin' level."); an unexpected answer is
raised, never ignored, so a half-applied change is seen by the next observation.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

from setpoint.agent.errors import Transient

TIMEOUT = 5.0
# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced, inherited, resolver and config maintenance.
_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN = 0x08 | 0x10 | 0x80
_OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}


class RuntimeAPIError(Transient):
    """The socket refused or HAProxy said no; the next sync observes again before acting."""


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
        except (OSError, TimeoutError) as e:
            raise RuntimeAPIError(f"HAProxy's admin socket {self.socket_path}: {e}", uncertain=True,
                                  reason="RuntimeAPIUnreachable") from e
        return data.decode(errors="replace")

    async def _expect(self, cmd: str, *ok: str) -> None:
        answer = (await self.command(cmd)).strip()
        if answer and not any(answer.startswith(o) for o in ok):
            raise RuntimeAPIError(f"HAProxy refused {cmd!r}: {answer}", reason="RuntimeAPIRefused")

    async def servers(self, backend: str) -> dict[str, tuple[str, int, str]]:
        """Server name -> (address, port, state) from ``show servers state``."""
        text = await self.command(f"show servers state {backend}")
        out: dict[str, tuple[str, int, str]] = {}
        for line in text.splitlines():
            if not line or line.startswith("#") or line.strip() == "1":
                continue
            f = line.split()
            if len(f) < 19:
                if "Can't find backend" in line or "No such" in line:
                    raise RuntimeAPIError(f"HAProxy has no backend {backend}: {line}", reason="RuntimeAPIRefused")
                continue
            admin, op = int(f[6]), int(f[5])
            state = "MAINT" if admin & _MAINT else "DRAIN" if admin & _DRAIN else _OP_STATES.get(op, "DOWN")
            out[f[3]] = (f[4], int(f[18]), state)
        return out

    async def sessions(self, backend: str) -> dict[str, int]:
        """Server name -> current sessions (``scur`` of ``show stat``)."""
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: int(r["scur"] or 0) for r in rows
                if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}

    async def add_server(self, backend: str, name: str, address: str, port: int, options: str) -> None:
        await self._expect(f"add server {backend}/{name} {address}:{port} {options}", "New server registered")
        await self._expect(f"set server {backend}/{name} state ready")
        if "check" in options.split():
            await self._expect(f"enable health {backend}/{name}")

    async def set_state(self, backend: str, name: str, state: str) -> None:
        await self._expect(f"set server {backend}/{name} state {state}")

    async def delete_server(self, backend: str, name: str) -> None:
        await self._expect(f"set server {backend}/{name} state maint")
        await self._expect(f"shutdown sessions server {backend}/{name}")
        await self._expect(f"del server {backend}/{name}", "Server deleted")
