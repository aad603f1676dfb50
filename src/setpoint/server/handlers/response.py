"""Responses: JSON bytes with their headers worked out once, lists assembled from stored bytes,
and warnings as kube-apiserver sends them."""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from setpoint.server.objects import encode
from setpoint.server.resources import ResourceType

JSON_MEDIA = "application/json"

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def warning_header(text: str) -> str:
    """A ``Warning: 299`` header value (RFC 7234) as kube-apiserver sends it. The text names
    fields from the request body, which may hold any character: control characters are escaped
    (a raw newline would end the header block) and so is what is not ASCII."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return '299 - "' + text.encode("ascii", "backslashreplace").decode("ascii") + '"'


class JSONBody(Response):
    """A JSON response from bytes already encoded: what ``Response`` does, without working out
    its headers from scratch for every request."""

    media_type = JSON_MEDIA

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]


def json_response(body: Any, status: int = 200) -> Response:
    return JSONBody(body if isinstance(body, bytes) else encode(body), status)


def list_body(rtype: ResourceType, version: str, revision: int, items: list[bytes],
              continue_token: str = "", remaining: int | None = None) -> bytes:
    """A ``KindList`` around items already encoded, without decoding them again."""
    meta: dict[str, Any] = {"resourceVersion": str(revision)}
    if continue_token:
        meta["continue"] = continue_token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
    head = encode({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(version), "metadata": meta})
    return head[:-1] + b',"items":[' + b",".join(items) + b"]}"
