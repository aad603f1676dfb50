"""The device simulator as a real HTTP server (asyncio streams, HTTP/1.1 keep-alive).

It serves setpoint's REST driver contract for the devices of a :class:`DeviceHub`, and a control
API (never subject to faults) to steer it::

    GET    /v1/health                     GET    /_sim/state     everything: devices, effects, faults
    GET    /v1/resources                  POST   /_sim/faults    {"fault": "drop_reply", "device": "kettle",
    GET    /v1/resources/{id}                                     "methods": ["PUT"], "count": 1}
    PUT    /v1/resources/{id}             DELETE /_sim/faults    clear every fault
    DELETE /v1/resources/{id}             POST   /_sim/devices   {"id": "kettle", "type": "kettle"}
                                          POST   /_sim/devices/{id}/replace

A lost request or reply is a request that gets no answer: the connection is held until the client
gives up and closes it.

Run it on its own: ``python -m setpoint_home.simulator --port 8123 --devices demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import unquote

from setpoint_home.devices import DeviceHub, FaultRule, Lost, Reply, problem

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity",
           500: "Internal Server Error", 503: "Service Unavailable"}
MAX_BODY = 1 << 20
HOLD_LOST = 60.0  # how long a connection whose reply was lost is held open at most

DEMO_DEVICES = {"hall-thermostat": "thermostat", "garage": "garageDoor", "porch-lights": "lights",
                "kettle": "kettle"}


class BadRequest(Exception):
    pass


class Simulator:
    def __init__(self, hub: DeviceHub, host: str = "127.0.0.1", port: int = 0) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> Simulator:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # end every connection; its handler returns by itself
            writer.transport.abort()
        if self._conns:
            _, late = await asyncio.wait(list(self._conns), timeout=5)
            for t in late:  # a request still being handled (a delay fault)
                t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        await self.hub.aclose()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except BadRequest as e:
                    _write(writer, problem(400, "BadRequest", str(e)), close=True)
                    await writer.drain()
                    return
                if request is None:
                    return
                method, path, headers, body = request
                try:
                    reply = await self._route(method, path, headers, body)
                except Lost:
                    # No answer: hold the connection until the client gives up.
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(reader.read(), HOLD_LOST)
                    return
                close = headers.get("connection", "").lower() == "close"
                _write(writer, reply, close=close)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        path = path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return problem(400, "BadRequest", "the body is not JSON")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["_sim"]:
            return self._control(method, parts[1:], body)
        if parts == ["v1", "health"] and method == "GET":
            return self.hub.health()
        if parts == ["v1", "resources"]:
            return await self.hub.handle(method, None, body, headers.get("idempotency-key"))
        if len(parts) == 3 and parts[:2] == ["v1", "resources"]:
            return await self.hub.handle(method, parts[2], body, headers.get("idempotency-key"))
        return problem(404, "NotFound", f"no route {method} {path}")

    def _control(self, method: str, parts: list[str], body: Any) -> Reply:
        hub = self.hub
        try:
            if parts == ["state"] and method == "GET":
                return Reply(200, hub.state())
            if parts == ["faults"] and method == "POST":
                rule = hub.inject(FaultRule.from_json(dict(body or {})))
                return Reply(201, rule.to_json())
            if parts == ["faults"] and method == "DELETE":
                hub.clear_faults()
                return Reply(200, {})
            if parts == ["devices"] and method == "POST":
                device = hub.add(str(body["id"]), str(body["type"]))
                return Reply(201, device.view())
            if len(parts) == 3 and parts[0] == "devices" and parts[2] == "replace" and method == "POST":
                return Reply(200, hub.replace(parts[1]).view())
        except KeyError as e:
            return problem(404, "NotFound", f"unknown {e}")
        except (TypeError, ValueError) as e:
            return problem(400, "BadRequest", str(e))
        return problem(404, "NotFound", f"no control route {method} /_sim/{'/'.join(parts)}")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest(f"bad request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest("chunked request bodies are not supported; send Content-Length")
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise BadRequest("body too large")
    body = await reader.readexactly(length) if length else b""
    return method.upper(), target, headers, body


def _write(writer: asyncio.StreamWriter, reply: Reply, *, close: bool = False) -> None:
    data = json.dumps(reply.body).encode() if reply.status != 204 else b""
    head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in reply.headers.items()]
    if close:
        head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)


async def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m setpoint_home.simulator", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--devices", default="demo", help="'demo' (the four devices of home.yaml) or 'none'")
    ap.add_argument("--travel-seconds", type=float, default=2.0, help="how long the garage door takes to move")
    a = ap.parse_args(argv)
    hub = DeviceHub(travel_seconds=a.travel_seconds)
    if a.devices == "demo":
        for id, type_ in DEMO_DEVICES.items():
            hub.add(id, type_)
    sim = await Simulator(hub, a.host, a.port).start()
    print(f"device simulator at {sim.url} (control API under {sim.url}/_sim/)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
