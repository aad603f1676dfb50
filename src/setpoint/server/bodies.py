"""Request bodies: size limit, content types, JSON and YAML, with Kubernetes' error replies."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from starlette.requests import Request

from setpoint.server.errors import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
from setpoint.server.requests import APIRequest

JSON = "application/json"
YAML = "application/yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_YAML_TYPES = {YAML, "application/x-yaml", "text/yaml"}
_json_decoder = msgspec.json.Decoder()
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def media_type(request: Request) -> str:
    raw = request.headers.get("content-type", "")
    return raw.split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; refuse larger bodies before buffering them."""
    whole = request.whole_body if isinstance(request, APIRequest) else None
    if whole is not None:
        if len(whole) > limit:
            raise RequestEntityTooLarge(f"the request body is {len(whole)} bytes, over the limit of {limit}")
        return whole
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestEntityTooLarge(f"the request body is {declared} bytes, over the limit of {limit}")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(body: bytes, ctype: str, accepted: tuple[str, ...] = (JSON, YAML)) -> Any:
    """Decode a JSON or YAML document; ``ctype`` already checked against what the verb accepts."""
    if ctype not in accepted and not (ctype in _YAML_TYPES and YAML in accepted) and ctype != "":
        raise UnsupportedMediaType(
            f'the body of the request was in an unknown format - accepted media types include: '
            f'{", ".join(accepted)}'
        )
    if not body.strip():
        raise BadRequest("the request body is empty")
    if ctype in _YAML_TYPES or ctype == APPLY_PATCH:
        try:
            docs = list(yaml.load_all(body, Loader=_SafeLoader))
        except yaml.YAMLError as e:
            raise BadRequest(f"error decoding YAML: {e}") from None
        except RecursionError:
            raise BadRequest("error decoding YAML: the document is nested too deeply") from None
        docs = [d for d in docs if d is not None]
        if len(docs) != 1:
            raise BadRequest(f"the request body must hold exactly one YAML document, not {len(docs)}")
        _check_metadata_keys(docs[0])
        budget = [MAX_YAML_VALUES]
        try:
            return _normalise_yaml(docs[0], budget)
        except RecursionError:
            raise BadRequest("error decoding YAML: the document is nested too deeply") from None
    try:
        return _json_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise BadRequest(f"error decoding JSON: {e}") from None
    except RecursionError:
        raise BadRequest("error decoding JSON: the document is nested too deeply") from None


def _check_metadata_keys(doc: Any) -> None:
    """Labels and annotations are maps of strings: a YAML key ``1``, ``true`` or ``null`` there
    is a mistake (it would collide with ``"1"``, or become a label nobody meant), so refuse it."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return
    for name in ("labels", "annotations"):
        value = meta.get(name)
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise BadRequest(f"metadata.{name}: key {k!r} is not a string (quote it in YAML)")


def _key(k: Any) -> str:
    """A YAML key as JSON needs it, spelled as Kubernetes' YAML conversion spells it."""
    if k is None:
        return "null"
    if isinstance(k, bool):
        return "true" if k else "false"
    return str(k)


# YAML aliases let a few hundred bytes stand for billions of values (a "billion laughs"): the
# document is refused once it expands to more values than a body of the size limit could hold.
MAX_YAML_VALUES = 1_000_000


def _normalise_yaml(value: Any, budget: list[int]) -> Any:
    """YAML has types JSON lacks (dates, non-string keys); make them what a JSON client would send.
    ``budget`` counts the values made, aliases expanded, and stops an alias bomb."""
    budget[0] -= 1
    if budget[0] < 0:
        raise RequestEntityTooLarge("the YAML document expands to too many values (aliases); refused")
    if isinstance(value, dict):
        return {_key(k): _normalise_yaml(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_yaml(v, budget) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
