"""The reconciler runtime against a real server: convergence, coalescing, error classes,
finalizers and leader election."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from setpoint.agent import Controller, LeaderElector, MemoryAlertSink, NotReady, Permanent, Result, Transient
from setpoint.agent.conditions import get_condition, is_converged
from setpoint.agent.ratelimit import ExponentialBackoff
from setpoint.client import Client, NotFound, Resource
from tests.conftest import WIDGET_CRD
from tests.servers import ServerProcess

pytestmark = pytest.mark.usefixtures("transfer")  # each test runs on every transport

WIDGETS = Resource("example.com", "v1", "widgets", namespaced=True, kind="Widget")
EVENTS = Resource("", "v1", "events", namespaced=True, kind="Event")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")


async def eventually(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with Client(server.client_config()) as c:
        with contextlib.suppress(Exception):
            await c.create(Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                    namespaced=False, kind="CustomResourceDefinition"), WIDGET_CRD)
        yield c


@pytest.fixture
async def ns(client: Client) -> str:
    name = f"ctl-{uuid.uuid4().hex[:8]}"
    await client.create(NAMESPACES, {"metadata": {"name": name}})
    return name


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}}


class Sizer(Controller):
    """Reports ``spec.size`` as ``status.observed``: the smallest useful reconciler."""

    resource = WIDGETS

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: list[tuple[str, int]] = []
        self.active = 0
        self.max_active_per_key: dict[str, int] = {}

    async def reconcile(self, obj: dict[str, Any]) -> Result:
        key = obj["metadata"]["name"]
        self.seen.append((key, obj["spec"]["size"]))
        return Result(status={"observed": obj["spec"]["size"]})


@contextlib.asynccontextmanager
async def running(ctl: Controller) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ctl.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_converges_and_writes_status(client: Client, ns: str) -> None:
    ctl = Sizer(client, namespace=ns)
    async with running(ctl):
        await client.create(WIDGETS, widget("a", 3), namespace=ns)

        async def converged() -> bool:
            obj = await client.get(WIDGETS, "a", namespace=ns)
            return is_converged(obj) and obj["status"]["observed"] == 3

        await eventually(converged, what="convergence")
        await client.patch(WIDGETS, "a", {"spec": {"size": 4}}, namespace=ns)

        async def converged_again() -> bool:
            obj = await client.get(WIDGETS, "a", namespace=ns)
            return is_converged(obj) and obj["status"]["observed"] == 4 and obj["metadata"]["generation"] == 2

        await eventually(converged_again, what="convergence after a change")
        writes = ctl.stats.status_writes
        # Nothing changed: a resync-like re-reconcile writes no status.
        ctl.queue.add(f"{ns}/a")
        await eventually(lambda: ctl.stats.reconciles >= 3, what="extra reconcile")
        assert ctl.stats.status_writes == writes


async def test_flood_of_updates_coalesces(client: Client, ns: str) -> None:
    n_objects, n_updates = 100, 4_000  # 40 changes an object, 32 at a time
    for i in range(n_objects):
        await client.create(WIDGETS, widget(f"w{i}", 0), namespace=ns)

    class Slow(Sizer):
        async def reconcile(self, obj: dict[str, Any]) -> Result:
            await asyncio.sleep(0.005)  # a driver call takes time; changes pile up meanwhile
            return await super().reconcile(obj)

    ctl = Slow(client, namespace=ns, workers=4)
    async with running(ctl):
        sem = asyncio.Semaphore(32)

        async def bump(i: int) -> None:
            async with sem:
                await client.patch(WIDGETS, f"w{i % n_objects}", {"spec": {"size": i // n_objects + 1}},
                                   namespace=ns)

        await asyncio.gather(*(bump(i) for i in range(n_updates)))

        async def all_final() -> bool:
            # Concurrent patches to one object land in any order: the truth is what is stored.
            listed = await client.list(WIDGETS, namespace=ns)
            return len(listed.items) == n_objects and all(
                (o.get("status") or {}).get("observed") == o["spec"]["size"] and is_converged(o)
                for o in listed.items)

        await eventually(all_final, timeout=60, what="final state")
    # Every object ended right, with far fewer reconciles than updates.
    assert ctl.stats.reconciles < n_updates / 2, ctl.stats.reconciles
    assert ctl.queue.coalescing_ratio > 0.3


async def test_error_classes(client: Client, ns: str) -> None:
    alerts = MemoryAlertSink()
    attempts: dict[str, int] = {}

    class Picky(Controller):
        resource = WIDGETS

        async def reconcile(self, obj: dict[str, Any]) -> Result:
            name = obj["metadata"]["name"]
            attempts[name] = attempts.get(name, 0) + 1
            if name == "perm":
                raise Permanent("size 7 is not supported by this subsystem", reason="Unsupported")
            if name == "flaky" and attempts[name] < 3:
                raise Transient("connection refused")
            if name == "hopeless":
                raise Transient("still refused")
            if name == "later" and attempts[name] < 2:
                raise NotReady("warming up", retry_after=0.2)
            return Result()

    ctl = Picky(client, namespace=ns, alert_sink=alerts, max_retries=4,
                rate_limiter=ExponentialBackoff(base=0.01, cap=0.05))
    async with running(ctl):
        for name in ("perm", "flaky", "hopeless", "later"):
            await client.create(WIDGETS, widget(name), namespace=ns)

        async def ready(name: str) -> bool:
            return is_converged(await client.get(WIDGETS, name, namespace=ns))

        await eventually(lambda: ready("flaky"), what="flaky converges")
        await eventually(lambda: ready("later"), what="not-ready converges")
        await eventually(lambda: len(alerts.alerts) == 2, what="two alerts")
        perm = await client.get(WIDGETS, "perm", namespace=ns)
        cond = get_condition(perm["status"], "Ready")
        assert cond is not None and cond["status"] == "False" and cond["reason"] == "Unsupported"
        assert attempts["perm"] == 1  # permanent: never retried
        hopeless = await client.get(WIDGETS, "hopeless", namespace=ns)
        assert get_condition(hopeless["status"], "Ready")["reason"] == "RetryBudgetExhausted"  # type: ignore[index]
        assert attempts["hopeless"] == 5  # the budget, then it stops
        assert {a.name: a.reason for a in alerts.alerts} == {"perm": "Unsupported",
                                                             "hopeless": "RetryBudgetExhausted"}

        async def warning_events() -> bool:
            evs = (await client.list(EVENTS, namespace=ns)).items
            return {e["involvedObject"]["name"] for e in evs if e["type"] == "Warning"} >= {"perm", "hopeless"}

        await eventually(warning_events, what="warning events")
        # A change to a given-up object brings it back.
        before = attempts["hopeless"]
        await client.patch(WIDGETS, "hopeless", {"spec": {"size": 2}}, namespace=ns)
        await eventually(lambda: attempts["hopeless"] > before, what="retry after a change")


async def test_finalizer_runs_before_deletion(client: Client, ns: str) -> None:
    cleaned: list[str] = []

    class WithCleanup(Sizer):
        finalizer = "example.com/cleanup"

        async def finalize(self, obj: dict[str, Any]) -> None:
            cleaned.append(obj["metadata"]["name"])

    ctl = WithCleanup(client, namespace=ns)
    async with running(ctl):
        await client.create(WIDGETS, widget("f"), namespace=ns)

        async def has_finalizer() -> bool:
            obj = await client.get(WIDGETS, "f", namespace=ns)
            return "example.com/cleanup" in (obj["metadata"].get("finalizers") or [])

        await eventually(has_finalizer, what="finalizer added")
        await client.delete(WIDGETS, "f", namespace=ns)

        async def gone() -> bool:
            try:
                await client.get(WIDGETS, "f", namespace=ns)
                return False
            except Exception:
                return True

        await eventually(gone, what="deletion")
        assert cleaned == ["f"]


async def test_leader_election_one_acts_and_hands_over(client: Client, ns: str, server: ServerProcess) -> None:
    acting: list[tuple[str, float, float]] = []  # (replica, start, end) of each reconcile

    def replica(identity: str) -> Controller:
        class Recording(Controller):
            resource = WIDGETS

            async def reconcile(self, obj: dict[str, Any]) -> Result:
                start = time.monotonic()
                await asyncio.sleep(0.01)
                acting.append((identity, start, time.monotonic()))
                return Result(status={"observed": obj["spec"]["size"]})

        elector = LeaderElector(client, namespace=ns, name="widgets-controller", identity=identity,
                                lease_duration=2.0, renew_deadline=1.5, retry_period=0.3)
        return Recording(client, namespace=ns, leader_election=elector)

    a, b = replica("a"), replica("b")
    task_a = asyncio.create_task(a.run())
    await eventually(lambda: a.leader_election is not None and a.leader_election.is_leader, what="a leads")
    task_b = asyncio.create_task(b.run())
    try:
        for i in range(5):
            await client.create(WIDGETS, widget(f"l{i}"), namespace=ns)
        await eventually(lambda: len(acting) >= 5, what="a reconciles")
        assert {r for r, _, _ in acting} == {"a"}
        assert b.leader_election is not None and not b.leader_election.is_leader
        # The leader stops (cleanly): b takes over and reconciles what changes next.
        task_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        stopped_at = time.monotonic()
        await eventually(lambda: b.leader_election is not None and b.leader_election.is_leader,
                         what="b takes over")
        await client.patch(WIDGETS, "l0", {"spec": {"size": 9}}, namespace=ns)
        await eventually(lambda: any(r == "b" for r, _, _ in acting), what="b reconciles")
        assert all(end <= stopped_at for r, _, end in acting if r == "a")
        # One acts at a time: b's first reconcile starts after a's last one ended (a gives the
        # lease back before its informers have closed, so b may start before a's task returns).
        last_a = max(end for r, _, end in acting if r == "a")
        assert all(start >= last_a for r, start, _ in acting if r == "b")
    finally:
        task_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_b


async def test_leader_that_cannot_renew_stops_before_another_starts(
    client: Client, ns: str, server: ServerProcess
) -> None:
    from setpoint.testing.faultproxy import FaultProxy

    acting: list[tuple[str, float, float]] = []
    proxy = await FaultProxy.for_url(server.url).start()

    def replica(identity: str, c: Client) -> Controller:
        class Recording(Controller):
            resource = WIDGETS

            async def reconcile(self, obj: dict[str, Any]) -> Result:
                start = time.monotonic()
                await asyncio.sleep(0.01)
                acting.append((identity, start, time.monotonic()))
                return Result()

        elector = LeaderElector(c, namespace=ns, name="partition", identity=identity,
                                lease_duration=2.0, renew_deadline=1.2, retry_period=0.2)
        return Recording(c, namespace=ns, leader_election=elector, resync_period=0.1)

    async with Client(server.client_config(proxy.url, timeout=0.5)) as through_proxy:
        a, b = replica("a", through_proxy), replica("b", client)
        await client.create(WIDGETS, widget("p"), namespace=ns)
        task_a = asyncio.create_task(a.run())
        await eventually(lambda: any(r == "a" for r, _, _ in acting), what="a leads and acts")
        task_b = asyncio.create_task(b.run())
        try:
            proxy.freeze()  # a is cut off from the server, without knowing it
            frozen_at = time.monotonic()
            await eventually(lambda: any(r == "b" for r, _, _ in acting), timeout=20, what="b takes over")
            last_a = max(end for r, _, end in acting if r == "a")
            first_b = min(start for r, start, _ in acting if r == "b")
            assert last_a < first_b, (last_a - frozen_at, first_b - frozen_at)
            assert a.leader_election is not None and not a.leader_election.is_leader
        finally:
            for t in (task_a, task_b):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await proxy.close()


async def test_changes_to_owned_objects_reconcile_the_owner(client: Client, ns: str) -> None:
    leases = Resource("coordination.k8s.io", "v1", "leases", namespaced=True, kind="Lease")
    seen: list[str] = []

    class Owner(Controller):
        resource = WIDGETS

        async def reconcile(self, obj: dict[str, Any]) -> Result:
            seen.append(obj["metadata"]["name"])
            return Result()

    ctl = Owner(client, namespace=ns, owns=[leases])
    async with running(ctl):
        owner = await client.create(WIDGETS, widget("owner"), namespace=ns)
        await eventually(lambda: "owner" in seen, what="owner reconciled")
        before = len(seen)
        ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "owner",
               "uid": owner["metadata"]["uid"], "controller": True}
        await client.create(leases, {"metadata": {"name": "child", "ownerReferences": [ref]},
                                     "spec": {"holderIdentity": "x"}}, namespace=ns)
        await eventually(lambda: len(seen) > before, what="owner reconciled for its child")
        before = len(seen)
        await client.patch(leases, "child", {"spec": {"holderIdentity": "y"}}, namespace=ns,
                           patch_type="merge")
        await eventually(lambda: len(seen) > before, what="owner reconciled when the child changed")
        assert set(seen) == {"owner"}


async def test_own_status_write_does_not_reconcile_again(client: Client, ns: str) -> None:
    ctl = Sizer(client, namespace=ns)
    async with running(ctl):
        for i in range(5):
            await client.create(WIDGETS, widget(f"e{i}", i), namespace=ns)

        async def all_converged() -> bool:
            items = (await client.list(WIDGETS, namespace=ns)).items
            return len(items) == 5 and all(is_converged(o) for o in items)

        await eventually(all_converged, what="converged")
        # One reconcile per object: the echo of each status write was not queued again. A later
        # change (by someone else) still is.
        assert ctl.stats.reconciles == 5, ctl.stats
        await client.patch(WIDGETS, "e0", {"spec": {"size": 9}}, namespace=ns)
        await eventually(lambda: ctl.stats.reconciles == 6, what="a real change reconciled")


async def test_an_object_given_up_on_can_still_be_deleted(client: Client, ns: str) -> None:
    """A permanent failure stops reconciling, not deleting: the finalizer path runs regardless."""
    cleaned: list[str] = []

    class Broken(Controller):
        resource = WIDGETS
        finalizer = "example.com/cleanup"

        async def reconcile(self, obj: dict[str, Any]) -> Result:
            raise Permanent("no-such-binary: not found")

        async def finalize(self, obj: dict[str, Any]) -> None:
            cleaned.append(obj["metadata"]["name"])

    ctl = Broken(client, namespace=ns)
    async with running(ctl):
        await client.create(WIDGETS, widget("broken"), namespace=ns)

        async def failed() -> bool:
            obj = await client.get(WIDGETS, "broken", namespace=ns)
            conds = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "False" for c in conds) and bool(
                obj["metadata"].get("finalizers"))

        await eventually(failed, what="the object marked failed, with its finalizer")
        await client.delete(WIDGETS, "broken", namespace=ns)

        async def gone() -> bool:
            try:
                await client.get(WIDGETS, "broken", namespace=ns)
                return False
            except NotFound:
                return True

        await eventually(gone, what="the failed object deleted")
    assert cleaned == ["broken"]
