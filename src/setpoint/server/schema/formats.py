"""The string formats a schema can name, checked as kube-apiserver checks them.

Kubernetes validates the formats of its strfmt registry and ignores every other one (int32,
int64, float, double, ... annotate numbers and are no constraint), so only the names in
``FORMATS`` reach a validator; the compiler drops the rest. Both validation walks use these
checks (fastjsonschema's generated function and the error walk), which keeps their verdicts
the same.

Patterns from users' schemas, and formats whose expressions could backtrack, run on RE2: time
linear in the input, as Kubernetes (Go's regexp) has it, so no value can stall the event loop.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final

import re2

__all__ = ["FORMATS", "re2_compile"]

_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False


def re2_compile(pattern: str) -> Any:
    """An RE2 expression; a pattern RE2 rejects raises ``re2.error`` rather than being logged."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


_DATE_RE: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\Z")
_DATETIME_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?\Z"
)
_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z"
)
_UUID_V_RE: Final = {
    v: re.compile(
        rf"^[0-9a-fA-F]{{8}}-?[0-9a-fA-F]{{4}}-?{v}[0-9a-fA-F]{{3}}-?[89abAB][0-9a-fA-F]{{3}}-?[0-9a-fA-F]{{12}}\Z"
    )
    for v in "345"
}
_HOSTNAME_LABEL_RE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?\Z")
_MAC_RE: Final = re.compile(
    r"^([0-9a-fA-F]{2}([:-]))[0-9a-fA-F]{2}(\2[0-9a-fA-F]{2}){4}((\2[0-9a-fA-F]{2}){2}|(\2[0-9a-fA-F]{2}){14})?\Z"
    r"|^[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}(\.[0-9a-fA-F]{4}){0,7}\Z"
)
_DURATION_RE: Final = re2_compile(
    r"^[-+]?(\s*(\d+(\.\d*)?|\.\d+)\s*"
    r"(ns|us|µs|ms|s|m|h|d|w|sec|secs|second|seconds|min|mins|minute|minutes|hr|hrs|hour|hours|"
    r"day|days|wk|wks|week|weeks))+$"
)
_EMAIL_RE: Final = re2_compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _is_date(s: str) -> bool:
    m = _DATE_RE.match(s)
    if not m:
        return False
    try:
        _dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _is_datetime(s: str) -> bool:
    m = _DATETIME_RE.match(s)
    if not m:
        return False
    try:
        _dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), min(int(m[6]), 59))
    except ValueError:
        return False
    return int(m[6]) <= 60  # a leap second is a valid RFC 3339 time


def _is_hostname(s: str) -> bool:
    name = s[:-1] if s.endswith(".") else s
    if not name or len(name) > 253:
        return False
    return all(len(label) <= 63 and _HOSTNAME_LABEL_RE.match(label) for label in name.split("."))


def _is_ip(version: int) -> Callable[[str], bool]:
    def check(s: str) -> bool:
        try:
            return ipaddress.ip_address(s).version == version
        except ValueError:
            return False

    return check


def _is_cidr(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError:
        return False
    return "/" in s


def _is_byte(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_uri(s: str) -> bool:
    # Go's url.ParseRequestURI: an absolute URI or an absolute path, no whitespace.
    if not s or any(c.isspace() for c in s):
        return False
    return s.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", s) is not None


FORMATS: Final[dict[str, Callable[[str], bool]]] = {
    "date": _is_date,
    "date-time": _is_datetime,
    "datetime": _is_datetime,
    "uuid": lambda s: _UUID_RE.match(s) is not None,
    "uuid3": lambda s: _UUID_V_RE["3"].match(s) is not None,
    "uuid4": lambda s: _UUID_V_RE["4"].match(s) is not None,
    "uuid5": lambda s: _UUID_V_RE["5"].match(s) is not None,
    "hostname": _is_hostname,
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
    "cidr": _is_cidr,
    "mac": lambda s: _MAC_RE.match(s) is not None,
    "byte": _is_byte,
    "duration": lambda s: _DURATION_RE.match(s) is not None,
    "email": lambda s: _EMAIL_RE.match(s) is not None,
    "uri": _is_uri,
    "bsonobjectid": lambda s: re.fullmatch(r"[0-9a-fA-F]{24}", s) is not None,
    "hexcolor": lambda s: re.fullmatch(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})", s) is not None,
    "password": lambda s: True,
}

