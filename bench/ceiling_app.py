"""The Python ceiling: the least an API server in setpoint's stack can do per durable create.

Starlette + uvicorn (uvloop, httptools) + msgspec, one worker. Two endpoints:

- ``POST /trivial``: decode the JSON body, encode a response, 201. Nothing else; it measures the
  framework and, more importantly, proves the load generator is not the bottleneck.
- ``POST /insert``: the same plus one durable SQLite insert (WAL, synchronous=FULL), group
  committed: a dedicated writer thread takes whatever requests are queued, writes them in one
  transaction, commits (fsync) once, then resolves every request's future on the event loop.

Run: ``python -m bench.ceiling_app --db PATH --listen 127.0.0.1:0``; it prints
``ceiling serving at http://HOST:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import queue
import socket
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

Item = tuple[str, bytes, asyncio.Future[int], asyncio.AbstractEventLoop]


class GroupCommitWriter:
    """One thread owns the connection; each loop turn commits everything queued so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self.commits = 0
        self.rows = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def submit(self, name: str, value: bytes) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self.queue.put((name, value, fut, loop))
        return fut

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (rev INTEGER PRIMARY KEY, name TEXT UNIQUE, value BLOB)")
        rev = db.execute("SELECT coalesce(max(rev), 0) FROM kv").fetchone()[0]
        stopping = False
        while not stopping:
            item = self.queue.get()
            batch: list[Item] = []
            while item is not None:
                batch.append(item)
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stopping = True
            if not batch:
                continue
            rows = []
            for name, value, _, _ in batch:
                rev += 1
                rows.append((rev, name, value))
            try:
                db.execute("BEGIN")
                db.executemany("INSERT INTO kv (rev, name, value) VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")
                error: BaseException | None = None
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                rev = db.execute("SELECT coalesce(max(rev), 0) FROM kv").fetchone()[0]
                error = e
            self.commits += 1
            self.rows += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int]]] = {}
            for (_, _, fut, loop), (r, _, _) in zip(batch, rows, strict=True):
                by_loop.setdefault(loop, []).append((fut, r))
            for loop, futs in by_loop.items():
                loop.call_soon_threadsafe(_resolve, futs, error)
        db.close()


def _resolve(futs: list[tuple[asyncio.Future[int], int]], error: BaseException | None) -> None:
    for fut, rev in futs:
        if fut.done():
            continue
        if error is None:
            fut.set_result(rev)
        else:
            fut.set_exception(error)


def make_app(db_path: str) -> Starlette:
    writer = GroupCommitWriter(db_path)

    async def trivial(request: Request) -> Response:
        obj: dict[str, Any] = _decode(await request.body())
        obj.setdefault("metadata", {})["resourceVersion"] = "1"
        return Response(_encode(obj), 201, media_type="application/json")

    async def insert(request: Request) -> Response:
        body = await request.body()
        obj: dict[str, Any] = _decode(body)
        meta = obj.setdefault("metadata", {})
        try:
            rev = await writer.submit(meta["name"], body)
        except sqlite3.IntegrityError:
            return Response(b'{"reason":"AlreadyExists"}', 409, media_type="application/json")
        meta["resourceVersion"] = str(rev)
        return Response(_encode(obj), 201, media_type="application/json")

    async def stats(request: Request) -> Response:
        return Response(_encode({"commits": writer.commits, "rows": writer.rows}),
                        media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            writer.stop()

    return Starlette(routes=[
        Route("/trivial", trivial, methods=["POST"]),
        Route("/insert", insert, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
    ], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    app = make_app(args.db)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                            log_level="warning")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.01)
        print(f"ceiling serving at http://{host}:{bound}", flush=True)
        sys.stdout.flush()
        await task

    # uvicorn.Server.serve() alone would run on the stock asyncio loop: ask for uvloop explicitly.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
