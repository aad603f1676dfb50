"""Simulated home devices and the faults of the network between them and their controller.

A :class:`DeviceHub` holds devices (thermostat, garage door, lights, kettle) addressed by id. It
speaks the resource model of setpoint's driver contract (spec accepted, status, phase,
operation id) through one transport-neutral entry point, :meth:`DeviceHub.handle`, which both the
HTTP simulator and the in-process plugin use.

Each device honours ``Idempotency-Key``: it remembers the operation ids it has carried out and
answers a repeat with its first reply (marked ``Idempotent-Replayed: true``), a repeat while the
first is still being carried out with 409, and an id reused for a different request with 422. An
operation that failed midway is not remembered: sending it again finishes the job.

Effects are counted per device (kettle boilings, door movements, bulb switches, thermostat
adjustments), and so are completed executions per operation id: at-most-once means no id was
ever carried out twice by the same device.

Faults (:class:`FaultRule`), matched in order against every request except the control ones:

=================  ===========================================================================
``drop_request``   the request is lost: nothing is done, no reply (the client times out)
``drop_reply``     the work is done, the reply is lost
``delay``          the request arrives ``seconds`` late (after the client may have given up)
``duplicate``      the request is delivered twice
``not_ready``      503 with ``Retry-After: seconds``; nothing is done
``fail_midway``    the device starts the work and fails part way (500)
=================  ===========================================================================

:meth:`DeviceHub.replace` swaps a device for a fresh one of the same type that remembers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

READY, PROGRESSING, FAILED = "Ready", "Progressing", "Failed"
FAULTS = ("drop_request", "drop_reply", "delay", "duplicate", "not_ready", "fail_midway")
METHODS = frozenset({"GET", "PUT", "DELETE"})


class Lost(Exception):
    """The simulated network lost the request (``after_work=False``) or its reply."""

    def __init__(self, after_work: bool) -> None:
        super().__init__("reply lost" if after_work else "request lost")
        self.after_work = after_work


class MidwayFailure(Exception):
    pass


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def problem(status: int, reason: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"reason": reason, "message": message}, dict(headers))


@dataclass
class FaultRule:
    fault: str
    device: str = "*"
    methods: frozenset[str] = METHODS
    count: int | None = 1  # how many times it fires; None: no limit
    probability: float = 1.0
    seconds: float = 0.05  # delay, or the Retry-After of not_ready
    fired: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")
        self.methods = frozenset(m.upper() for m in self.methods)
        if not self.methods <= METHODS:
            raise ValueError(f"methods must be among {sorted(METHODS)}")
        if not 0 <= self.probability <= 1 or self.seconds < 0:
            raise ValueError("probability must be in [0, 1] and seconds >= 0")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        allowed = {"fault", "device", "methods", "count", "probability", "seconds"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        if "methods" in data:
            data = {**data, "methods": frozenset(data["methods"])}
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "device": self.device, "methods": sorted(self.methods), "count": self.count,
                "probability": self.probability, "seconds": self.seconds, "fired": self.fired}


# ------------------------------------------------------------------------------------------------
# Devices


@dataclass
class _Done:
    fingerprint: str
    reply: Reply


class Device:
    """One device: the resource it exposes, its memory of operations, its effects."""

    type: ClassVar[str] = ""

    def __init__(self, id: str, hub: DeviceHub) -> None:
        self.id = id
        self.hub = hub
        self.serial = uuid.uuid4().hex[:8]  # a replaced device is a different unit
        self.spec: dict[str, Any] | None = None
        self.owner: dict[str, Any] | None = None
        self.phase = READY
        self.message = ""
        self.operation_id = ""
        self.effects: Counter[str] = Counter()
        self.executions: Counter[str] = Counter()  # operation id -> completed executions
        # When its spec or phase last changed (time.monotonic(), one clock for every process of
        # the host): how long a client took to get it where it is, measured without polling it.
        self.changed_at: float | None = None
        self._done: dict[str, _Done] = {}
        self._in_flight: set[str] = set()

    # -- what subclasses define
    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self, settings: dict[str, Any]) -> str | None:
        """Why ``settings`` cannot be applied, or None."""
        raise NotImplementedError

    async def apply(self, settings: dict[str, Any], midway: bool) -> None:
        """Act on the difference between the current state and ``settings``."""
        raise NotImplementedError

    # -- the resource
    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "spec": self.spec, "status": {"type": self.type, **self.status()},
                               "phase": self.phase}
        if self.message:
            out["message"] = self.message
        if self.owner:
            out["owner"] = self.owner
        if self.operation_id:
            out["operationId"] = self.operation_id
        if self.phase == PROGRESSING:
            out["retryAfterSeconds"] = self.hub.travel_seconds
        return out

    async def put(self, key: str, body: dict[str, Any], midway: bool) -> Reply:
        spec = body.get("spec")
        fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        if key in self._in_flight:
            return problem(409, "OperationInProgress", f"operation {key} is being carried out",
                           **{"Retry-After": "0.05"})
        done = self._done.get(key)
        if done is not None:
            if done.fingerprint != fingerprint:
                return problem(422, "IdempotencyKeyReused", f"operation {key} was used for another request")
            return Reply(done.reply.status, done.reply.body, {"Idempotent-Replayed": "true"})
        settings = spec.get("settings") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or spec.get("type") != self.type or not isinstance(settings or {}, dict):
            return problem(422, "WrongDevice", f"{self.id} is a {self.type}; spec must be "
                                               f"{{type: {self.type}, settings: {{...}}}}")
        settings = settings or {}
        why = self.validate(settings)
        if why:
            return problem(422, "InvalidSettings", f"{self.id}: {why}")
        self._in_flight.add(key)
        before = (self.spec, self.phase)
        try:
            self.spec = spec
            owner = body.get("owner")
            self.owner = owner if isinstance(owner, dict) else None
            self.operation_id = key
            self.phase, self.message = READY, ""
            try:
                await self.apply(settings, midway)
            except MidwayFailure as e:
                self.phase, self.message = FAILED, str(e)
                return problem(500, "FailedMidway", f"{self.id}: {e}")
        finally:
            self._in_flight.discard(key)
            if (self.spec, self.phase) != before:
                self.changed_at = time.monotonic()
        self.executions[key] += 1
        reply = Reply(202 if self.phase == PROGRESSING else 200, self.view())
        self._done[key] = _Done(fingerprint, reply)
        return reply

    def delete(self) -> Reply:
        """Forget the configuration (the device is no longer managed); no physical effect."""
        if self.spec is not None or self.phase != READY:
            self.changed_at = time.monotonic()
        self.spec = self.owner = None
        self.operation_id = self.message = ""
        if self.phase == FAILED:
            self.phase = READY
        return Reply(200, self.view())


class Thermostat(Device):
    type = "thermostat"

    def __init__(self, id: str, hub: DeviceHub) -> None:
        super().__init__(id, hub)
        self.target = 18.0

    def status(self) -> dict[str, Any]:
        return {"targetCelsius": self.target, "currentCelsius": self.target}

    def validate(self, settings: dict[str, Any]) -> str | None:
        t = settings.get("targetCelsius")
        if isinstance(t, bool) or not isinstance(t, int | float) or not 5 <= t <= 35:
            return "targetCelsius must be a number from 5 to 35"
        return None

    async def apply(self, settings: dict[str, Any], midway: bool) -> None:
        if midway:
            raise MidwayFailure("the relay did not answer; the new target was not stored")
        target = float(settings["targetCelsius"])
        if target != self.target:
            self.target = target
            self.effects["adjustments"] += 1


class GarageDoor(Device):
    type = "garageDoor"

    def __init__(self, id: str, hub: DeviceHub) -> None:
        super().__init__(id, hub)
        self.position = "closed"  # open, closed, opening, closing, stopped
        self._motion: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        return {"position": self.position}

    def validate(self, settings: dict[str, Any]) -> str | None:
        return None if settings.get("position") in ("open", "closed") else "position must be open or closed"

    async def apply(self, settings: dict[str, Any], midway: bool) -> None:
        want = settings["position"]
        moving = {"open": "opening", "closed": "closing"}[want]
        if self.position == want:
            return
        if self.position == moving:  # already on its way
            self.phase = PROGRESSING
            return
        if self._motion is not None:
            self._motion.cancel()
        self.effects["motorRuns"] += 1
        if midway:
            self.position = "stopped"
            raise MidwayFailure("the door stopped halfway (obstacle sensor)")
        self.position = moving
        self.phase = PROGRESSING
        self._motion = asyncio.get_running_loop().create_task(self._travel(want))

    async def _travel(self, want: str) -> None:
        await asyncio.sleep(self.hub.travel_seconds)  # the door takes time to move
        self.position = want
        self.effects["movements"] += 1
        if self.phase == PROGRESSING:
            self.phase = READY
            self.changed_at = time.monotonic()


class Lights(Device):
    type = "lights"

    def __init__(self, id: str, hub: DeviceHub) -> None:
        super().__init__(id, hub)
        self.bulbs = [{"on": False, "brightness": 0} for _ in range(hub.bulbs)]

    def status(self) -> dict[str, Any]:
        return {"bulbs": [dict(b) for b in self.bulbs]}

    def validate(self, settings: dict[str, Any]) -> str | None:
        if not isinstance(settings.get("on"), bool):
            return "on must be true or false"
        b = settings.get("brightness", 100)
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 100:
            return "brightness must be an integer from 1 to 100"
        return None

    async def apply(self, settings: dict[str, Any], midway: bool) -> None:
        on = settings["on"]
        want = {"on": on, "brightness": int(settings.get("brightness", 100)) if on else 0}
        switched = 0
        for i, bulb in enumerate(self.bulbs):
            if bulb == want:
                continue
            if midway and switched >= len(self.bulbs) // 2:
                raise MidwayFailure(f"bulb {i} did not answer after {switched} were switched")
            self.bulbs[i] = dict(want)
            self.effects[f"bulb{i}"] += 1
            self.effects["switches"] += 1
            switched += 1


class Kettle(Device):
    """Pressing "on" boils the water once; then it switches itself off. Not idempotent by nature:
    every accepted "on" boils again, so only operation ids keep a retry from boiling twice."""

    type = "kettle"

    def __init__(self, id: str, hub: DeviceHub) -> None:
        super().__init__(id, hub)
        self.temperature = 20
        self.boiled_at: float | None = None

    def status(self) -> dict[str, Any]:
        return {"on": False, "temperatureCelsius": self.temperature, "boiledAt": self.boiled_at}

    def validate(self, settings: dict[str, Any]) -> str | None:
        return None if isinstance(settings.get("on"), bool) else "on must be true or false"

    async def apply(self, settings: dict[str, Any], midway: bool) -> None:
        if not settings["on"]:
            return
        if midway:
            self.temperature = 60
            raise MidwayFailure("the heating element tripped at 60 °C")
        self.temperature = 100
        self.boiled_at = time.time()
        self.effects["boilings"] += 1


DEVICE_TYPES: dict[str, type[Device]] = {c.type: c for c in (Thermostat, GarageDoor, Lights, Kettle)}


# ------------------------------------------------------------------------------------------------
# The hub


class DeviceHub:
    def __init__(self, *, travel_seconds: float = 0.05, bulbs: int = 4, seed: int | None = None) -> None:
        self.travel_seconds = travel_seconds
        self.bulbs = bulbs
        self.instance = uuid.uuid4().hex[:12]
        self.devices: dict[str, Device] = {}
        self.retired: list[Device] = []
        self.rules: list[FaultRule] = []
        self.requests: Counter[str] = Counter()  # "METHOD" and "METHOD id"
        self.faults_fired: Counter[str] = Counter()
        self.rng = random.Random(seed)
        self._background: set[asyncio.Task[Any]] = set()

    # -- setup and control
    def add(self, id: str, type: str) -> Device:
        if type not in DEVICE_TYPES:
            raise ValueError(f"unknown device type {type!r}; known: {', '.join(DEVICE_TYPES)}")
        if id in self.devices:
            raise ValueError(f"device {id!r} exists")
        device = self.devices[id] = DEVICE_TYPES[type](id, self)
        return device

    def replace(self, id: str) -> Device:
        """A fresh unit of the same type takes ``id``: factory state, no memory of operations."""
        old = self.devices[id]
        self.retired.append(old)
        new = self.devices[id] = type(old)(id, self)
        return new

    def inject(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        self.rules.clear()

    def effects(self) -> dict[str, dict[str, int]]:
        return {id: dict(d.effects) for id, d in sorted(self.devices.items())}

    def repeated_operations(self) -> list[tuple[str, str, int]]:
        """(device, operation id, executions) for every id carried out more than once by one unit."""
        return [(d.id, key, n) for d in [*self.retired, *self.devices.values()]
                for key, n in d.executions.items() if n > 1]

    def state(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "devices": {id: {**d.view(), "serial": d.serial, "changedAt": d.changed_at, "effects": dict(d.effects),
                             "executions": dict(d.executions)} for id, d in sorted(self.devices.items())},
            "retired": [{"id": d.id, "serial": d.serial, "effects": dict(d.effects),
                         "executions": dict(d.executions)} for d in self.retired],
            "faults": [r.to_json() for r in self.rules],
            "faultsFired": dict(self.faults_fired),
            "requests": dict(self.requests),
            "repeatedOperations": self.repeated_operations(),
        }

    def health(self) -> Reply:
        return Reply(200, {"status": "ok", "driver": "home-simulator", "version": "1", "instance": self.instance})

    # -- the device protocol
    def _match(self, method: str, id: str | None) -> FaultRule | None:
        for rule in self.rules:
            if method not in rule.methods or (rule.device != "*" and rule.device != id):
                continue
            if rule.count is not None and rule.fired >= rule.count:
                continue
            if rule.probability < 1 and self.rng.random() >= rule.probability:
                continue
            rule.fired += 1
            self.faults_fired[rule.fault] += 1
            return rule
        return None

    async def handle(self, method: str, id: str | None, body: dict[str, Any] | None, key: str | None) -> Reply:
        """One request of the device protocol (``id`` None: the list). Raises :class:`Lost` when
        the simulated network loses the request or its reply."""
        self.requests[method] += 1
        self.requests[f"{method} {id or '*'}"] += 1
        rule = self._match(method, id)
        fault = rule.fault if rule else ""
        if fault == "drop_request":
            raise Lost(after_work=False)
        if fault == "not_ready":
            assert rule is not None
            return problem(503, "NotReady", f"{id} is busy", **{"Retry-After": f"{rule.seconds:g}"})
        if fault == "delay":
            assert rule is not None
            await asyncio.sleep(rule.seconds)  # the request is late on the wire
        reply = await self._dispatch(method, id, body, key, midway=fault == "fail_midway")
        if fault == "duplicate":  # the network delivers a second copy
            await self._dispatch(method, id, body, key, midway=False)
        if fault == "drop_reply":
            raise Lost(after_work=True)
        return reply

    async def _dispatch(self, method: str, id: str | None, body: dict[str, Any] | None, key: str | None,
                        midway: bool) -> Reply:
        if id is None:
            if method != "GET":
                return problem(405, "MethodNotAllowed", f"{method} on the list")
            return Reply(200, {"items": [d.view() for _, d in sorted(self.devices.items())]})
        device = self.devices.get(id)
        if device is None:
            return problem(404, "NotFound", f"no device {id!r} in this home")
        if method == "GET":
            return Reply(200, device.view())
        if method == "DELETE":
            return device.delete()
        if method == "PUT":
            if not key:
                return problem(400, "IdempotencyKeyMissing", "PUT needs an Idempotency-Key header")
            if not isinstance(body, dict):
                return problem(400, "BadRequest", "the body must be a JSON object")
            return await device.put(key, body, midway)
        return problem(405, "MethodNotAllowed", method)

    async def aclose(self) -> None:
        for d in self.devices.values():
            motion = getattr(d, "_motion", None)
            if motion is not None:
                motion.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await motion
