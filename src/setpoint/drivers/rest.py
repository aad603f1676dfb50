"""The REST bridge: a driver whose subsystem runs out of process, in any language, behind the HTTP
contract in ``docs/driver-contract.md`` (OpenAPI: ``docs/driver-contract.openapi.yaml``).

=======================  =====================================  ==================================
call                     HTTP                                   success
=======================  =====================================  ==================================
observe one resource     ``GET /v1/resources/{id}``             200 resource, 404 absent
ensure one resource      ``PUT /v1/resources/{id}`` with        200/201 done, 202 accepted and
                         ``Idempotency-Key: <operation id>``    still progressing
delete                   ``DELETE /v1/resources/{id}``          200, 204, 404 (nothing left)
list (orphans)           ``GET /v1/resources``                  200 ``{"items": [...]}``
health                   ``GET /v1/health``                     200
=======================  =====================================  ==================================

How results map to error classes:

- no connection could be made (refused, connect timeout, pool full): Transient; the request never
  left, so the outcome is certain;
- a timeout or a broken connection after the request was sent, a malformed reply, and any 5xx
  except 501 and 503: Transient with ``uncertain=True`` (the subsystem may have done the work, or
  part of it);
- 409, 423, 425, 429 and 503: NotReady, after ``Retry-After`` when the reply carries one;
- 501 and every other 4xx: Permanent.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from datetime import UTC
from typing import TypeVar
from urllib.parse import quote

import httpx
import msgspec

from setpoint.drivers.base import DriverError, NotReady, Obj, OperationId, Permanent, Transient
from setpoint.drivers.latency import AdaptiveTimeout
from setpoint.drivers.resources import (
    Health,
    Owner,
    RemoteResource,
    ResourceSetDriver,
    Spec,
    one_resource,
)
from setpoint.drivers.retry import Backoff, RetryPolicy

__all__ = ["RestBridge", "RestDriver", "classify_response", "parse_retry_after"]

T = TypeVar("T")

NOT_READY_CODES = frozenset({409, 423, 425, 429, 503})
CONTRACT_VERSION = "v1"

_resource = msgspec.json.Decoder(RemoteResource)
_health = msgspec.json.Decoder(Health)


class _Items(msgspec.Struct):
    items: list[RemoteResource]


class _Problem(msgspec.Struct):
    reason: str = ""
    message: str = ""


_items = msgspec.json.Decoder(_Items)
_problem = msgspec.json.Decoder(_Problem)
_encode = msgspec.json.Encoder()


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def classify_response(resp: httpx.Response, what: str, *, mutating: bool) -> DriverError:
    """The error for a response that is not a success of ``what``."""
    code = resp.status_code
    try:
        problem = _problem.decode(resp.content) if resp.content else _Problem()
    except msgspec.DecodeError:
        problem = _Problem(message=resp.text[:200])
    reason = problem.reason or f"HTTP{code}"
    message = f"{what}: {code} {resp.reason_phrase}" + (f": {problem.message}" if problem.message else "")
    if code in NOT_READY_CODES:
        return NotReady(message, retry_after=parse_retry_after(resp.headers.get("retry-after")), reason=reason)
    if code == 501 or 400 <= code < 500:
        return Permanent(message, reason=reason)
    if code >= 500:
        return Transient(message, uncertain=mutating, reason=reason,
                         retry_after=parse_retry_after(resp.headers.get("retry-after")))
    return Transient(f"{what}: unexpected {code}", uncertain=mutating, reason=f"HTTP{code}")


def _transport_error(e: httpx.TransportError, what: str, *, mutating: bool) -> Transient:
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Transient(f"{what}: {type(e).__name__}: {e}", reason="Unreachable")  # never sent
    reason = "Timeout" if isinstance(e, httpx.TimeoutException) else "ConnectionLost"
    return Transient(f"{what}: {type(e).__name__}: {e}".rstrip(": "), uncertain=mutating, reason=reason)


class RestBridge:
    """A :class:`~setpoint.drivers.resources.ResourceAPI` over HTTP (see the module doc)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, connect_timeout: float | None = None,
                 headers: dict[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 64, min_timeout: float = 0.03) -> None:
        self.base_url = base_url.rstrip("/")
        self.requests = 0
        # ``timeout`` is the cap: each request waits a multiple of the recent answers' latency.
        self.timeout = AdaptiveTimeout(timeout, floor=min(min_timeout, timeout))
        self._connect = connect_timeout if connect_timeout is not None else timeout
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout if connect_timeout is not None else timeout),
            headers={"Accept": "application/json", "User-Agent": "setpoint-rest-bridge", **(headers or {})},
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, what: str, *, content: bytes | None = None,
                    headers: dict[str, str] | None = None, adaptive: bool = True) -> httpx.Response:
        """One request. ``adaptive``: one resource's request, timed and timed out by what such
        requests take; a listing of every resource (or the health check) is not like them and
        waits the configured timeout, without teaching the adaptive one anything."""
        mutating = method not in ("GET", "HEAD")
        self.requests += 1
        timeout = self.timeout.current if adaptive else self.timeout.cap
        started = time.monotonic()
        try:
            resp = await self._client.request(method, path, content=content, headers=headers,
                                              timeout=httpx.Timeout(timeout, connect=min(timeout, self._connect)))
            if adaptive:
                self.timeout.observe(time.monotonic() - started)
            return resp
        except httpx.TransportError as e:
            raise _transport_error(e, what, mutating=mutating) from e
        except httpx.InvalidURL as e:
            raise Permanent(f"{what}: {e}", reason="InvalidURL") from e

    @staticmethod
    def _path(id: str) -> str:
        if not id:
            raise Permanent("empty resource id", reason="InvalidResourceId")
        return f"/{CONTRACT_VERSION}/resources/{quote(id, safe='')}"

    async def get(self, id: str) -> RemoteResource | None:
        what = f"GET {id}"
        resp = await self._send("GET", self._path(id), what)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise classify_response(resp, what, mutating=False)
        return _decode(_resource, resp, what, mutating=False)

    async def put(self, id: str, spec: Spec, owner: Owner, op: OperationId) -> RemoteResource:
        what = f"PUT {id}"
        body = _encode.encode({"spec": spec, "owner": owner})
        resp = await self._send("PUT", self._path(id), what, content=body,
                                headers={"Idempotency-Key": str(op), "Content-Type": "application/json"})
        if resp.status_code not in (200, 201, 202):
            raise classify_response(resp, what, mutating=True)
        return _decode(_resource, resp, what, mutating=True)

    async def delete(self, id: str, op: OperationId) -> None:
        what = f"DELETE {id}"
        resp = await self._send("DELETE", self._path(id), what, headers={"Idempotency-Key": str(op)})
        if resp.status_code == 202:
            raise NotReady(f"{what}: still being removed",
                           retry_after=parse_retry_after(resp.headers.get("retry-after")), reason="Deleting")
        if resp.status_code not in (200, 204, 404):
            raise classify_response(resp, what, mutating=True)

    async def list(self) -> list[RemoteResource]:
        what = "GET resources"
        resp = await self._send("GET", f"/{CONTRACT_VERSION}/resources", what, adaptive=False)
        if resp.status_code != 200:
            raise classify_response(resp, what, mutating=False)
        return _decode(_items, resp, what, mutating=False).items

    async def health(self) -> Health:
        what = "GET health"
        resp = await self._send("GET", f"/{CONTRACT_VERSION}/health", what, adaptive=False)
        if resp.status_code != 200:
            raise classify_response(resp, what, mutating=False)
        return _decode(_health, resp, what, mutating=False)


def _decode(decoder: msgspec.json.Decoder[T], resp: httpx.Response, what: str, *, mutating: bool) -> T:
    try:
        return decoder.decode(resp.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise Transient(f"{what}: malformed reply: {e}", uncertain=mutating, reason="MalformedReply") from e


class RestDriver(ResourceSetDriver):
    """A driver for a subsystem behind the REST contract at ``base_url``.

    By default each object is one resource, ``<namespace>.<name>``, whose spec is the object's
    spec; pass ``resources`` to map an object to several. Plugin name: ``rest``.
    """

    name = "rest"
    retry_policy = RetryPolicy(
        transient=Backoff(attempts=20, base=0.1, cap=30.0),
        not_ready=Backoff(attempts=None, base=0.5, cap=30.0),
        deadline=3600.0,
    )

    def __init__(self, base_url: str, *, timeout: float = 5.0,
                 resources: Callable[[Obj], dict[str, Spec]] = one_resource,
                 retry_policy: RetryPolicy | None = None, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, progress_poll: float = 0.5,
                 concurrency: int = 16, min_timeout: float = 0.03, op_attempts: int = 6) -> None:
        self.bridge = RestBridge(base_url, timeout=timeout, headers=headers, transport=transport,
                                 max_connections=max(concurrency, 1), min_timeout=min_timeout)
        super().__init__(self.bridge, resources=resources, retry_policy=retry_policy,
                         progress_poll=progress_poll, concurrency=concurrency, op_attempts=op_attempts)

    async def aclose(self) -> None:
        await self.bridge.aclose()

