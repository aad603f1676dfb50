"""Leader election with a Lease object, so several replicas of a controller run and one acts.

The algorithm is client-go's: the leader renews ``spec.renewTime`` every ``retry_period``; a
candidate that sees the lease unchanged for ``lease_duration`` *by its own clock* (it never
compares clocks across machines) takes it over with an optimistic-concurrency update, so two
candidates cannot both win. Safety comes from the ordering of the timeouts: a leader that has
not renewed for ``renew_deadline`` (< ``lease_duration``) stops acting — its work is cancelled —
before any other replica may consider the lease expired and start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from setpoint.agent.conditions import now_micro
from setpoint.backoff import Outage
from setpoint.client import AlreadyExists, Client, ClientError, Conflict, NotFound, Resource

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True, kind="Lease")


class LeaderElector:
    def __init__(
        self,
        client: Client,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        release_on_stop: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_stop = release_on_stop
        self.clock = clock
        self.is_leader = False
        self.transitions = 0
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._lease: dict[str, Any] | None = None
        self._outage = Outage(log, f"lease {namespace}/{name}")

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Until cancelled: acquire the lease, run ``lead()`` while holding it, and cancel it the
        moment the lease cannot be renewed in time. Then try to acquire again."""
        try:
            while True:
                await self._acquire()
                task: asyncio.Task[None] = asyncio.create_task(lead(), name=f"leading-{self.name}")
                try:
                    await self._hold(task)
                finally:
                    self.is_leader = False
                    if not task.done():
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                log.warning("%s lost leadership of %s/%s", self.identity, self.namespace, self.name)
        finally:
            if self.is_leader or self._lease is not None:
                await self._release()

    async def _acquire(self) -> None:
        while True:
            if await self._try_acquire_or_renew():
                self.is_leader = True
                self.transitions += 1
                log.info("%s became leader of %s/%s", self.identity, self.namespace, self.name)
                return
            await asyncio.sleep(self.retry_period)

    async def _hold(self, task: asyncio.Task[None]) -> None:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.retry_period)
            if done:
                return
            if await self._try_acquire_or_renew():
                continue
            if self.clock() - self._renewed_at >= self.renew_deadline:
                return  # stop acting before anyone else may think the lease expired

    async def _try_acquire_or_renew(self) -> bool:
        now = self.clock()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "renewTime": now_micro(),
        }
        try:
            lease = await self.client.get(LEASES, self.name, namespace=self.namespace)
        except NotFound:
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": spec["renewTime"], "leaseTransitions": 0}}
            try:
                self._lease = await self.client.create(LEASES, body, namespace=self.namespace)
            except (AlreadyExists, Conflict):
                return False
            except ClientError as e:
                self._outage.failed(e)
                return False
            self._outage.recovered()
            self._renewed_at = now
            return True
        except ClientError as e:
            self._outage.failed(e)
            return False
        self._outage.recovered()
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity") or ""
        record = (holder, current.get("renewTime"), current.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = now
        duration = float(current.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by someone else, and not expired by our clock
        new_spec = dict(current)
        new_spec.update(spec)
        if holder != self.identity:
            new_spec["acquireTime"] = spec["renewTime"]
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            self._lease = await self.client.update(LEASES, lease, namespace=self.namespace)
        except ClientError as e:
            self._outage.failed(e)
            return False
        self._outage.recovered()
        self._renewed_at = now
        return True

    async def _release(self) -> None:
        """Hand over at once on a clean stop instead of making the others wait for expiry."""
        lease, self._lease = self._lease, None
        if not self.release_on_stop or lease is None:
            return
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now_micro())
        lease["spec"] = spec
        with contextlib.suppress(ClientError, asyncio.CancelledError):
            await asyncio.shield(self.client.update(LEASES, lease, namespace=self.namespace))
