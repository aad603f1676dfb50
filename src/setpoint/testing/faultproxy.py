"""A TCP proxy that makes the network unreliable on purpose, for tests and benchmarks.

Agents must converge however desired state reaches them, so their tests put this proxy between
an agent and the API server (or NATS) and break things on cue:

- ``delay``: every chunk is held this long before it is passed on (both directions);
- :meth:`FaultProxy.stall`: bytes stop flowing, connections stay open (a dead peer that never
  says so, the case that kept kopf's watches silent for hours);
- :meth:`FaultProxy.cut`: every open connection is closed at once (a restart, a reset);
- :meth:`FaultProxy.partition`: stalled, and new connections wait too, for N seconds, then
  everything flows again;
- :meth:`FaultProxy.refuse`: cut, and every new connection is closed as soon as it is accepted,
  until :meth:`FaultProxy.resume` (a server that is down, or restarting, for as long as a test
  needs);
- :meth:`FaultProxy.freeze`: every open connection goes dead for good without being closed, and
  new ones are accepted but never answered, until :meth:`FaultProxy.unfreeze` (what a NAT that
  forgot the flow or a broken middlebox leaves behind: only a peer's own timeout notices);
- with ``nats=`` a :class:`NatsFaults`: core NATS ``MSG``/``HMSG`` frames from the server are
  dropped, duplicated or reordered one by one at given rates. The NATS protocol is line-based
  text with a byte count per payload, so this is exact: other lines (``INFO``, ``PING``, ``+OK``)
  pass untouched, and a client sees well-formed frames that just went missing or came twice.

Everything is bounded: each direction forwards one chunk at a time (a stalled direction stops
reading, so TCP pushes back on the sender rather than the proxy buffering without end), and a
reordered frame is held for at most one more frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "NatsFaults", "ProxyStats"]

_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024  # a NATS control line longer than this is not NATS: pass it through


@dataclass
class NatsFaults:
    """Per-frame fault rates for ``MSG``/``HMSG`` frames the server sends, in [0, 1]."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int | None = None
    # Only messages on subjects starting with one of these (none: every message). Replies to
    # requests (``_INBOX.``) are left alone by naming the subjects that carry the data.
    subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NatsFaults.{name} must be between 0 and 1, not {value}")


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0
    refused: int = 0  # connections closed at accept by refuse()
    bytes_up: int = 0  # client → server
    bytes_down: int = 0  # server → client
    frames: int = 0  # NATS MSG/HMSG frames seen from the server
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    by_connection: list[int] = field(default_factory=list)  # bytes down per connection, in order


class _NatsFramer:
    """Splits the server's byte stream into NATS protocol units and applies :class:`NatsFaults`.

    A unit is a control line (``...\\r\\n``) or a message frame: its ``MSG``/``HMSG`` line plus the
    payload of the length the line states, plus ``\\r\\n``."""

    def __init__(self, faults: NatsFaults, stats: ProxyStats, rng: random.Random) -> None:
        self.faults = faults
        self.stats = stats
        self.rng = rng
        self.buf = bytearray()
        self.held: bytes | None = None  # a frame kept back to be sent after the next one

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while True:
            unit, is_msg = self._next_unit()
            if unit is None:
                break
            if is_msg:
                out += self._frame(unit)
            else:
                out += unit
        return bytes(out)

    def _next_unit(self) -> tuple[bytes | None, bool]:
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > _MAX_LINE:  # not a protocol we understand: let it through
                unit = bytes(self.buf)
                self.buf.clear()
                return unit, False
            return None, False
        line = bytes(self.buf[:end])
        head = line[:5].upper()
        if head.startswith(b"MSG ") or head.startswith(b"HMSG "):
            try:
                size = int(line.rsplit(b" ", 1)[1])
            except (ValueError, IndexError):
                size = -1
            if size >= 0:
                total = end + 2 + size + 2
                if len(self.buf) < total:
                    return None, False
                unit = bytes(self.buf[:total])
                del self.buf[:total]
                return unit, True
        unit = bytes(self.buf[:end + 2])
        del self.buf[:end + 2]
        return unit, False

    def _frame(self, frame: bytes) -> bytes:
        f = self.faults
        if f.subjects:
            subject = frame.split(b" ", 2)[1].decode(errors="replace")
            if not subject.startswith(f.subjects):
                return frame + self.flush()
        self.stats.frames += 1
        out = b""
        if self.rng.random() < f.drop:
            self.stats.dropped += 1
        else:
            out = frame
            if self.rng.random() < f.duplicate:
                self.stats.duplicated += 1
                out = frame + frame
        if self.held is not None:  # the frame held back goes out after this one
            out, self.held = out + self.held, None
        elif out and self.rng.random() < f.reorder:
            self.stats.reordered += 1
            self.held, out = out, b""
        return out

    def flush(self) -> bytes:
        """Whatever is held back, when the stream goes quiet (a held frame is late, not lost)."""
        held, self.held = self.held, None
        return held or b""


class _Link:
    """One client connection through the proxy, from accept to close: what the faults act on."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers = [client]  # and the upstream end, once it is open
        self.pumps: tuple[asyncio.Task[None], ...] = ()
        # Not yet through the gate a partition closes, so not open as far as cut() goes (refuse()
        # closes it all the same).
        self.waiting = True
        self.frozen = False
        self.closed = asyncio.Event()

    def freeze(self) -> None:
        self.frozen = True
        for t in self.pumps:
            t.cancel()  # stop reading too: neither peer hears anything more, not even an end

    def abort(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.transport.abort()
        self.closed.set()


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` listens on ``proxy.host:proxy.port`` and
    forwards to ``host:port``, applying the faults currently set. ``FaultProxy.for_url(url)`` is
    the same in front of a server's URL, and ``proxy.url`` the URL to give clients instead."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 delay: float = 0.0, nats: NatsFaults | None = None, scheme: str = "tcp") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self.port = 0
        self.delay = delay
        self.nats = nats
        self.scheme = scheme
        self.stats = ProxyStats()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._frozen = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._rng = random.Random(nats.seed if nats else None)
        self._partition_task: asyncio.Task[None] | None = None

    @classmethod
    def for_url(cls, url: str, *, listen_host: str = "127.0.0.1", delay: float = 0.0,
                nats: NatsFaults | None = None) -> FaultProxy:
        """A proxy in front of the server at ``url``, so that a client given :attr:`url` instead
        reaches the same server, faults included. The scheme is kept: the proxy only moves bytes,
        so TLS runs end to end through it."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"not a URL with a host and a port: {url!r}")
        return cls(parts.hostname, parts.port, listen_host=listen_host, delay=delay, nats=nats,
                   scheme=parts.scheme)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._partition_task is not None:
            self._partition_task.cancel()
        self._flowing.set()
        self.cut()
        for link in list(self._links):  # those a partition still holds at its gate
            link.abort()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults ----------------------------------------------------------------------------------

    def stall(self) -> None:
        """Stop every byte, both ways, on every connection; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """End a stall or a refusal. Not a freeze: that is :meth:`unfreeze`, since the connections
        a freeze killed stay dead and resuming them would hide what the test is about."""
        self._flowing.set()
        self._refusing = False

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> int:
        """Close every open connection now; returns how many were cut. New ones are accepted."""
        return self._abort([link for link in self._links if not link.waiting])

    def refuse(self) -> int:
        """Close every connection, those a partition holds too, and every new one as soon as it is
        accepted, until :meth:`resume`; returns how many open ones were closed. Unlike a stall or a
        partition a client learns at once that it got nowhere, as from a server that is down."""
        self._refusing = True
        return self._abort(list(self._links))

    def freeze(self) -> None:
        """Every open connection goes dead for good: nothing more crosses it, either way, not even
        its end, yet no socket is closed. New connections are accepted and as dead (they stay so
        after :meth:`unfreeze`: their clients have given up on them by then). Only a peer's own
        timeout notices, which is what the fault is for; cut, refuse or close end them."""
        self._frozen = True
        for link in self._links:
            link.freeze()

    def unfreeze(self) -> None:
        """New connections are forwarded again; the frozen ones stay dead, so a client must notice
        and reconnect, as it must behind a real middlebox."""
        self._frozen = False

    def partition(self, seconds: float) -> None:
        """Nothing gets through, on open or new connections, for ``seconds``; then it flows again."""
        self.stall()
        if self._partition_task is not None:
            self._partition_task.cancel()

        async def heal() -> None:
            await asyncio.sleep(seconds)  # the fault's own duration, not a synchronisation
            self._flowing.set()  # the partition only: a refusal set meanwhile lasts until resume()

        self._partition_task = asyncio.create_task(heal(), name="setpoint-faultproxy-heal")

    def _abort(self, links: list[_Link]) -> int:
        for link in links:
            link.abort()
            self._links.discard(link)
        if links:
            self.stats.cuts += 1
        return len(links)

    # -- forwarding ------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Its own task (asyncio's, for each connection): ended by close(), which owns it, so a
        # cancellation here is the normal end, not an error for asyncio to report.
        with contextlib.suppress(asyncio.CancelledError):
            await self._connection(reader, writer)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        index = len(self.stats.by_connection)
        self.stats.by_connection.append(0)
        link = _Link(writer)
        try:
            if self._refusing:
                self.stats.refused += 1
                return
            self._links.add(link)
            link.frozen = self._frozen  # during a freeze: accepted, never answered
            await self._flowing.wait()  # a partition holds new connections too
            if not link.frozen and not link.closed.is_set():
                try:
                    upstream_r, upstream_w = await asyncio.open_connection(self.target_host, self.target_port)
                except OSError:
                    return
                link.writers.append(upstream_w)
            link.waiting = False
            if link.closed.is_set():  # refused while a partition held it, or while connecting
                return
            if not link.frozen:
                framer = _NatsFramer(self.nats, self.stats, self._rng) if self.nats else None
                link.pumps = (asyncio.create_task(self._pump(reader, upstream_w, None, index, link, up=True)),
                              asyncio.create_task(self._pump(upstream_r, writer, framer, index, link, up=False)))
                try:
                    await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in link.pumps:
                        t.cancel()
                    for t in link.pumps:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await t
            if link.frozen:  # dead, not closed: until cut(), refuse() or close()
                await link.closed.wait()
        finally:
            self._links.discard(link)
            link.abort()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    framer: _NatsFramer | None, index: int, link: _Link, *, up: bool) -> None:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_CHUNK), 0.05) if framer and framer.held \
                    else await reader.read(_CHUNK)
            except TimeoutError:
                data = None  # quiet while a frame is held back: send it, it is late, not lost
            if data == b"":
                return
            await self._flowing.wait()
            if self.delay > 0:
                await asyncio.sleep(self.delay)  # the injected latency itself
                await self._flowing.wait()
            if link.frozen:  # a freeze's cancellation can be lost in wait_for (Python 3.11)
                return
            if data is None:
                assert framer is not None
                out = framer.flush()
            else:
                out = framer.feed(data) if framer is not None else data
            if up:
                self.stats.bytes_up += len(data or b"")
            else:
                self.stats.bytes_down += len(out)
                self.stats.by_connection[index] += len(out)
            if out:
                writer.write(out)
                await writer.drain()
