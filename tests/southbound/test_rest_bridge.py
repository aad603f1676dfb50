"""The REST bridge maps what the wire does to error classes: against a real HTTP server that
answers what each test scripts (or nothing at all)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from setpoint.drivers.base import NotReady, OperationId, Permanent, Transient
from setpoint.drivers.resources import Owner
from setpoint.drivers.rest import RestBridge, RestDriver, parse_retry_after

OP = OperationId("uid-1", 3, "ensure:kettle")
RESOURCE = {"id": "kettle", "spec": {"on": True}, "status": {"on": False}, "phase": "Ready",
            "operationId": str(OP), "owner": {"uid": "uid-1", "kind": "Home", "namespace": "n", "name": "h"}}


@dataclass
class Scripted:
    """Answers each request with the next scripted reply; ``None`` means no answer at all."""

    replies: list[tuple[int, dict[str, str], object] | None] = field(default_factory=list)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                except asyncio.IncompleteReadError:
                    return
                method, path, _ = head[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.seen.append((method, path, headers, body))
                reply = self.replies.pop(0) if self.replies else (500, {}, {})
                if reply is None:
                    await reader.read()  # until the client gives up
                    return
                status, extra, payload = reply
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}",
                         *(f"{k}: {v}" for k, v in extra.items())]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    s = Scripted()
    s.server = await asyncio.start_server(s.conn, "127.0.0.1", 0)
    yield s
    s.server.close()


@contextlib.asynccontextmanager
async def bridge(url: str, timeout: float = 5.0) -> AsyncIterator[RestBridge]:  # short where a test is about it
    b = RestBridge(url, timeout=timeout)
    try:
        yield b
    finally:
        await b.aclose()


async def test_requests_follow_the_contract(scripted: Scripted) -> None:
    scripted.replies = [(200, {}, RESOURCE), (404, {}, {}), (202, {}, {**RESOURCE, "phase": "Progressing"}),
                        (204, {}, b""), (200, {}, {"items": [RESOURCE]}),
                        (200, {}, {"status": "ok", "driver": "x", "version": "1", "instance": "i"})]
    async with bridge(scripted.url) as b:
        got = await b.get("kettle")
        assert got is not None and got.spec == {"on": True} and got.owner == Owner("uid-1", "Home", "n", "h")
        assert await b.get("nope/with space") is None
        put = await b.put("kettle", {"on": True}, Owner("uid-1", "Home", "n", "h"), OP)
        assert put.phase == "Progressing"
        await b.delete("kettle", OP)
        assert [r.id for r in await b.list()] == ["kettle"]
        assert (await b.health()).instance == "i"
    methods = [(m, p) for m, p, _, _ in scripted.seen]
    assert methods == [("GET", "/v1/resources/kettle"), ("GET", "/v1/resources/nope%2Fwith%20space"),
                       ("PUT", "/v1/resources/kettle"), ("DELETE", "/v1/resources/kettle"),
                       ("GET", "/v1/resources"), ("GET", "/v1/health")]
    _, _, headers, body = scripted.seen[2]
    assert headers["idempotency-key"] == "uid-1/3/ensure:kettle"
    assert json.loads(body) == {"spec": {"on": True}, "owner": {"uid": "uid-1", "kind": "Home", "namespace": "n",
                                                                 "name": "h"}}


@pytest.mark.parametrize(("status", "headers", "cls", "uncertain", "retry_after"), [
    (409, {}, NotReady, False, None),
    (423, {"Retry-After": "2"}, NotReady, False, 2.0),
    (503, {"Retry-After": "0.5"}, NotReady, False, 0.5),
    (429, {}, NotReady, False, None),
    (400, {}, Permanent, False, None),
    (404, {}, Permanent, False, None),  # PUT to a resource that cannot exist
    (422, {}, Permanent, False, None),
    (501, {}, Permanent, False, None),
    (500, {}, Transient, True, None),
    (502, {}, Transient, True, None),
    (504, {}, Transient, True, None),
])
async def test_status_codes_map_to_error_classes(scripted: Scripted, status: int, headers: dict[str, str],
                                                 cls: type, uncertain: bool, retry_after: float | None) -> None:
    scripted.replies = [(status, headers, {"reason": "Because", "message": "told so"})]
    async with bridge(scripted.url) as b:
        with pytest.raises(cls) as info:
            await b.put("kettle", {"on": True}, Owner("u"), OP)
    e = info.value
    assert type(e) is cls and e.uncertain is uncertain and e.retry_after == retry_after
    assert e.reason == "Because" and "told so" in e.message


async def test_timeout_is_uncertain_for_changes_only(scripted: Scripted) -> None:
    scripted.replies = [None, None]
    async with bridge(scripted.url, timeout=0.2) as b:
        with pytest.raises(Transient) as put:
            await b.put("kettle", {"on": True}, Owner("u"), OP)
        with pytest.raises(Transient) as get:
            await b.get("kettle")
    assert put.value.uncertain and put.value.reason == "Timeout"
    assert not get.value.uncertain


async def test_malformed_reply_is_uncertain(scripted: Scripted) -> None:
    scripted.replies = [(200, {}, b"<html>proxy error</html>")]
    async with bridge(scripted.url) as b:
        with pytest.raises(Transient) as info:
            await b.put("kettle", {"on": True}, Owner("u"), OP)
    assert info.value.uncertain and info.value.reason == "MalformedReply"


async def test_refused_connection_is_certain() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with bridge(f"http://127.0.0.1:{port}") as b:
        with pytest.raises(Transient) as info:
            await b.put("kettle", {"on": True}, Owner("u"), OP)
    assert not info.value.uncertain and info.value.reason == "Unreachable"  # it never left


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") is None and parse_retry_after("soon") is None and parse_retry_after(None) is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (parse_retry_after(later) or 0) <= 30


async def test_driver_observes_after_an_uncertain_put(scripted: Scripted) -> None:
    """A PUT whose reply is lost is followed by a GET, not by another PUT; the GET shows the work
    done, and that is a success."""
    obj = {"kind": "Home", "metadata": {"uid": "uid-1", "generation": 3, "name": "kettle", "namespace": "n"},
           "spec": {"on": True}}
    scripted.replies = [(404, {}, {}), None, (200, {}, {**RESOURCE, "id": "n.kettle"})]
    driver = RestDriver(scripted.url, timeout=0.2)
    try:
        observed = await driver.observe(obj)
        done = await driver.ensure(obj, observed, OperationId.for_object(obj, "ensure"))
    finally:
        await driver.aclose()
    assert done["n.kettle"].phase == "Ready"
    assert [m for m, *_ in scripted.seen] == ["GET", "PUT", "GET"]
    assert driver.stats.uncertain == 1 and driver.stats.confirmed_after_uncertain == 1


async def test_connection_lost_after_sending_is_uncertain() -> None:
    """The driver read the whole request and hung up: it may have acted."""
    received = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with bridge(f"http://127.0.0.1:{port}") as b:
            with pytest.raises(Transient) as info:
                await b.put("kettle", {"on": True}, Owner("u"), OP)
    finally:
        server.close()
        await server.wait_closed()
    assert received.is_set()
    assert info.value.uncertain, info.value.reason
