"""Every transfer through a random mix of faults: the API's connections stalled, cut and
partitioned, NATS cut and partitioned, and its messages dropped, duplicated and reordered, while
objects are created, changed and deleted. Whatever the mix (seeded, so a failure can be replayed),
an informer on each transfer ends with exactly the server's objects at their last revision, never
hands a handler an older revision of an object after a newer one, and holds no more connections
at the end than it needs."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from setpoint.agent.cache import object_key
from setpoint.agent.informer import Backoff, Informer
from setpoint.client import Client, NotFound
from setpoint.testing.faultproxy import FaultProxy, NatsFaults
from setpoint.transfer import TRANSPORTS, transport_factory
from setpoint.transfer.natsserver import NatsServer
from tests.agent.support import WIDGETS, client_for, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess

PREFIX = f"m{uuid.uuid4().hex[:8]}"
OBJECTS = 30
ROUNDS = 8


@pytest.fixture(scope="module")
def mix_server(tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("mix"), ["--nats", nats_server.url, "--nats-prefix", PREFIX]).start()
    yield srv
    srv.stop()


@pytest.fixture
async def admin(mix_server: ServerProcess) -> AsyncIterator[Client]:
    async with client_for(mix_server) as c:
        yield c


def _split(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _faults(rng: random.Random, api: FaultProxy, nats: FaultProxy, stop: asyncio.Event) -> list[str]:
    """A fault every 0.1-0.3 s until ``stop``, each kind once and then at random; returns what it
    did, for the failure message."""
    done: list[str] = []
    kinds = ["api-stall", "api-cut", "api-partition", "nats-cut", "nats-partition"]
    first = rng.sample(kinds, len(kinds))  # each kind early on, in a random order; then at random
    while not stop.is_set():
        fault = first.pop() if first else rng.choice([*kinds, "none"])
        done.append(fault)
        if fault == "api-stall":
            api.stall()
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # the fault's own duration
            api.resume()
        elif fault == "api-cut":
            api.cut()
        elif fault == "api-partition":
            api.partition(rng.uniform(0.1, 0.5))
        elif fault == "nats-cut":
            nats.cut()
        elif fault == "nats-partition":
            nats.partition(rng.uniform(0.1, 0.5))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(0.1, 0.3)):
                await stop.wait()
    return done


async def _writes(rng: random.Random, admin: Client, ns: str) -> None:
    """Rounds of changes to every object, with deletes and re-creates among them."""
    alive = set(range(OBJECTS))
    for r in range(1, ROUNDS + 1):
        for i in range(OBJECTS):
            roll = rng.random()
            if i in alive and roll < 0.08:
                await admin.delete(WIDGETS, f"w{i}", namespace=ns)
                alive.discard(i)
            elif i not in alive and roll < 0.5:
                await admin.create(WIDGETS, widget(f"w{i}", size=r), namespace=ns)
                alive.add(i)
            elif i in alive:
                with contextlib.suppress(NotFound):
                    await admin.patch(WIDGETS, f"w{i}", {"spec": {"size": r * 100 + i}}, namespace=ns)
        await asyncio.sleep(rng.uniform(0.05, 0.25))  # the workload's own pace between rounds


@pytest.mark.parametrize("transfer", TRANSPORTS)
async def test_every_transfer_converges_through_a_random_fault_mix(
        admin: Client, mix_server: ServerProcess, nats_server: NatsServer, transfer: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ns = await prepare(admin)
    for i in range(OBJECTS):
        await admin.create(WIDGETS, widget(f"w{i}", size=0), namespace=ns)
    api_host, api_port = _split(mix_server.url)
    nats_host, nats_port = _split(nats_server.url)
    backwards: list[tuple[str, int, int]] = []
    newest: dict[str, int] = {}

    def saw(obj: dict[str, Any]) -> None:
        key, rv = object_key(obj), int(obj["metadata"]["resourceVersion"])
        if rv < newest.get(key, 0):
            backwards.append((key, newest[key], rv))
        newest[key] = max(rv, newest.get(key, 0))

    nats_faults = NatsFaults(drop=0.1, duplicate=0.05, reorder=0.05, seed=seed, subjects=(f"{PREFIX}.",))
    async with FaultProxy(api_host, api_port) as api, FaultProxy(nats_host, nats_port, nats=nats_faults) as nats:
        factory = transport_factory(transfer, poll_interval=1.0, resync_period=2.0,
                                    nats_url=f"nats://{nats.address}", consumer=f"mix-{ns}")
        scheme = mix_server.url.split("://", 1)[0]
        async with client_for(mix_server, f"{scheme}://{api.address}", timeout=5.0) as client:
            informer = Informer(client, WIDGETS, namespace=ns, transport=factory(),
                                backoff=Backoff(initial=0.05, cap=1.0), idle_timeout=2.0)
            informer.add_handler(on_add=saw, on_update=lambda _old, new: saw(new),
                                 on_delete=lambda obj: saw(obj))
            async with informer:
                await informer.wait_synced(timeout=30)
                stop = asyncio.Event()
                faults = asyncio.create_task(_faults(rng, api, nats, stop))
                try:
                    await _writes(rng, admin, ns)
                finally:
                    stop.set()
                    done = await faults
                api.resume()
                nats.resume()

                async def same_as_server() -> bool:
                    truth = {object_key(o): o["metadata"]["resourceVersion"]
                             for o in (await admin.list(WIDGETS, namespace=ns)).items}
                    return truth == {object_key(o): o["metadata"]["resourceVersion"] for o in informer.list()}

                # The mix did bite: connections were broken while the transfer was in use.
                assert api.stats.cuts + nats.stats.cuts > 0 and len(set(done) - {"none"}) >= 2, done
                if transfer in ("interrupt", "command"):
                    assert nats.stats.dropped + nats.stats.duplicated + nats.stats.reordered > 0
                what = f"{transfer} to converge after seed {seed}'s faults {done}"
                await eventually(same_as_server, timeout=45, what=what)
                assert not backwards, f"older revisions after newer ones (seed {seed}): {backwards[:5]}"
                assert informer.error is None
                # Nothing piled up: the informer holds what it needs, not a connection per fault.
                assert api.cut() <= 3, f"connections to the API left open after seed {seed}'s faults {done}"
                assert nats.cut() <= 2, f"connections to NATS left open after seed {seed}'s faults {done}"
                assert len(informer.list()) <= OBJECTS
