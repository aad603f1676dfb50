"""The request the API handlers get: Starlette's, with cheaper headers and the body at hand.

Why: a create reads five or six headers and its body. Starlette's ``Headers`` scans the header
list and lower-cases the name on every lookup, and its body goes through an async generator
and an ASGI ``receive``; on a path that costs ~100 µs in all, those added a few per cent.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

_NAMES: dict[str, bytes] = {}  # header name as code asks for it -> as it is on the wire


def _wire_name(key: str) -> bytes:
    name = _NAMES.get(key)
    if name is None:
        name = key.lower().encode("latin-1")
        if len(_NAMES) < 1024:
            _NAMES[key] = name
    return name


class RequestHeaders(Headers):
    """Read-only headers looked up in a dict built once; the first of repeated headers wins,
    as with ``Headers``."""

    def __init__(self, scope: Scope) -> None:
        # What Headers(scope=scope) does, without copying the list uvicorn made for this request.
        raw = scope["headers"]
        self._list = raw if isinstance(raw, list) else list(raw)
        self._first = dict(reversed(self._list))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._first.get(_wire_name(key))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = self._first.get(_wire_name(key))
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and _wire_name(key) in self._first


class APIRequest(Request):
    """``whole_body`` is the body when it had fully arrived with the headers (the usual case for
    API requests), so that it is read without a round trip through ``receive``; None otherwise."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, whole_body: bytes | None = None) -> None:
        super().__init__(scope, receive, send)
        self.whole_body = whole_body

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = RequestHeaders(self.scope)
        return self._headers
