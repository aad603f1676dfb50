"""The desired state of a ProcessSet, validated: what the driver acts on.

Everything the driver reads from ``spec`` is checked here, once, with a message naming the
field; a ProcessSet that fails is a :class:`~setpoint.drivers.base.Permanent` error (no retry
will fix it), reported on the object rather than crashing the agent.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from setpoint.drivers.base import Obj, Permanent

MAX_REPLICAS = 1024

_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME_RE = re.compile(r"[^=\0]+")


@dataclass(frozen=True, slots=True)
class Spec:
    uid: str
    namespace: str
    name: str
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str | None
    replicas: int
    port_env: str | None
    backoff_initial: float
    backoff_max: float
    grace: float
    spec_hash: str


def valid_uid(uid: object) -> bool:
    return isinstance(uid, str) and _UID_RE.fullmatch(uid) is not None and uid not in (".", "..")


def _bad(msg: str) -> Permanent:
    return Permanent(f"invalid ProcessSet: {msg}", reason="InvalidSpec")


def _text(value: object, field: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _bad(f"{field} must be a string")
    if "\0" in value:
        raise _bad(f"{field} must not contain NUL")
    if not empty and not value:
        raise _bad(f"{field} must not be empty")
    return value


def number(value: object, field: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _bad(f"{field} must be a finite number >= 0")
    return float(value)


def parse(obj: Obj, max_replicas: int) -> Spec:
    if not isinstance(obj, Mapping):
        raise _bad("object must be a mapping")
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise _bad("metadata and spec must be objects")
    uid = meta.get("uid")
    if not valid_uid(uid):
        raise _bad(f"metadata.uid {uid!r} is missing or not usable as an identifier")
    assert isinstance(uid, str)
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")

    command = _text(spec.get("command"), "spec.command", empty=False)
    raw_args = spec.get("args") or []
    if not isinstance(raw_args, list):
        raise _bad("spec.args must be a list of strings")
    args = tuple(_text(a, f"spec.args[{i}]") for i, a in enumerate(raw_args))
    raw_env = spec.get("env") or []
    if not isinstance(raw_env, list):
        raise _bad("spec.env must be a list of {name, value}")
    env: list[tuple[str, str]] = []
    for i, item in enumerate(raw_env):
        if not isinstance(item, Mapping):
            raise _bad(f"spec.env[{i}] must be an object")
        key = _text(item.get("name"), f"spec.env[{i}].name", empty=False)
        if not _ENV_NAME_RE.fullmatch(key):
            raise _bad(f"spec.env[{i}].name {key!r} must not contain '='")
        value = item.get("value")
        env.append((key, "" if value is None else _text(value, f"spec.env[{i}].value")))
    wd = spec.get("workingDir")
    working_dir = _text(wd, "spec.workingDir") or None if wd is not None else None
    replicas = spec.get("replicas", 1)
    if replicas is None:
        replicas = 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise _bad("spec.replicas must be an integer >= 0")
    if replicas > max_replicas:
        raise _bad(f"spec.replicas {replicas} exceeds this agent's limit of {max_replicas}")
    pe = spec.get("portEnv")
    port_env = _text(pe, "spec.portEnv") or None if pe is not None else None
    if port_env is not None and not _ENV_NAME_RE.fullmatch(port_env):
        raise _bad(f"spec.portEnv {port_env!r} must not contain '='")
    backoff = spec.get("restartBackoff") or {}
    if not isinstance(backoff, Mapping):
        raise _bad("spec.restartBackoff must be an object")
    initial = number(backoff.get("initialSeconds"), "spec.restartBackoff.initialSeconds", 1.0)
    maximum = number(backoff.get("maxSeconds"), "spec.restartBackoff.maxSeconds", 60.0)
    grace = number(spec.get("stopGracePeriodSeconds"), "spec.stopGracePeriodSeconds", 5.0)

    identity = msgspec.json.encode([command, list(args), [list(e) for e in env], working_dir, port_env])
    return Spec(
        uid=uid, namespace=namespace, name=name, command=command, args=args, env=tuple(env),
        working_dir=working_dir, replicas=replicas, port_env=port_env, backoff_initial=initial,
        backoff_max=max(maximum, initial), grace=grace,
        spec_hash=hashlib.sha256(identity).hexdigest()[:16],
    )


