"""Authentication by static bearer tokens and authorization by ABAC policy files.

Both file formats are Kubernetes' own (``--token-auth-file`` and
``--authorization-policy-file``), so operators can reuse files and knowledge, and kubectl's
``token:`` kubeconfig entries work unchanged. The token file is re-read when it changes, so
adding a user does not need a restart; policy files are read once, as Kubernetes does.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

from setpoint.server.errors import Forbidden, Unauthorized

__all__ = [
    "ABAC_API_VERSION",
    "ALL_AUTHENTICATED",
    "ALL_UNAUTHENTICATED",
    "ANONYMOUS",
    "ABACAuthorizer",
    "AlwaysAllow",
    "Attributes",
    "Authorizer",
    "Policy",
    "TokenAuthenticator",
    "User",
    "forbidden_error",
    "forbidden_message",
]

log = logging.getLogger(__name__)

ALL_AUTHENTICATED: Final = "system:authenticated"
ALL_UNAUTHENTICATED: Final = "system:unauthenticated"
ABAC_API_VERSION: Final = "abac.authorization.kubernetes.io/v1beta1"
READ_ONLY_VERBS: Final = frozenset({"get", "list", "watch"})


@dataclass(frozen=True, slots=True)
class User:
    """Who made a request; ``groups`` include ``system:authenticated`` for every token user,
    which is what lets an ABAC rule (or a future RBAC binding) address all of them."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()


ANONYMOUS: Final = User("system:anonymous", "", (ALL_UNAUTHENTICATED,))


# ---------------------------------------------------------------------------------------------
# Static token file


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _parse_token_file(path: Path, text: str) -> dict[bytes, User]:
    """``token,user,uid[,"group1,group2"]`` per line, as kube-apiserver reads it.

    Tokens are kept only as SHA-256 digests: a lookup then compares digests, which an attacker
    cannot steer byte by byte, so response times reveal nothing about valid tokens.
    """
    users: dict[bytes, User] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            record = next(csv.reader([stripped], strict=True))
        except csv.Error as e:
            raise ValueError(f"token file '{path}', line {lineno}: {e}") from None
        if len(record) < 3:
            raise ValueError(
                f"token file '{path}', line {lineno}: must have at least 3 columns "
                f"(token, user name, user uid), found {len(record)}"
            )
        token, name, uid = record[0], record[1], record[2]
        if not token:
            # Kubernetes skips such records with a warning rather than failing the whole file.
            log.warning("empty token in token file '%s', line %d: record ignored", path, lineno)
            continue
        groups: list[str] = []
        if len(record) >= 4:
            groups = [g.strip() for g in record[3].split(",") if g.strip()]
        if ALL_AUTHENTICATED not in groups:
            groups.append(ALL_AUTHENTICATED)
        digest = _digest(token)
        if digest in users:
            log.warning("duplicate token in token file '%s', line %d: the later record wins", path, lineno)
        users[digest] = User(name, uid, tuple(groups))
    return users


class TokenAuthenticator:
    """Bearer tokens from a Kubernetes static token file, reloaded when the file changes.

    The file is stat()ed at most once per ``recheck_interval`` seconds on the request path, so
    the cost per request is a clock read; a change in mtime, size or inode triggers a re-read.
    If the new content is malformed the previous tokens stay in force (an editing mistake must
    not lock every user out), and the error is logged.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recheck_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._interval = recheck_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._users: dict[bytes, User] = {}
        self._seen: dict[str, tuple[dict[bytes, User], User]] = {}
        self._load()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TokenAuthenticator:
        """Load ``path`` now: a missing or malformed file at startup is fatal (OSError or
        ValueError naming the line), unlike a bad edit later."""
        return cls(path)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        signature = self._stat()
        self._users = _parse_token_file(self.path, self.path.read_text(encoding="utf-8"))
        self._signature = signature
        self._checked_at = self._clock()

    def _maybe_reload(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked_at < self._interval:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is already checking; keep serving the current tokens
        try:
            self._checked_at = now
            try:
                signature = self._stat()
            except OSError as e:
                log.error("token file '%s' cannot be read, keeping the loaded tokens: %s", self.path, e)
                return
            if signature == self._signature:
                return
            self._signature = signature
            try:
                users = _parse_token_file(self.path, self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.error("token file '%s' not reloaded, keeping the loaded tokens: %s", self.path, e)
                return
            self._users = users
            self._seen = {}
            log.info("token file '%s' reloaded: %d tokens", self.path, len(users))
        finally:
            self._lock.release()

    def authenticate(self, authorization_header: str | None) -> User:
        """The user a ``Authorization: Bearer <token>`` header names, or Unauthorized (401).

        Parsing follows kube-apiserver: the scheme is case-insensitive, and anything after the
        token separated by a space is ignored.
        """
        self._maybe_reload()
        if authorization_header is not None:
            known = self._seen.get(authorization_header)
            if known is not None and known[0] is self._users:
                return known[1]
        header = (authorization_header or "").strip()
        parts = header.split(" ", 2)
        if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
            raise Unauthorized("Unauthorized")
        digest = _digest(parts[1])
        user = self._users.get(digest)
        if user is None:
            # A token added a moment ago works at once: an unknown token costs one stat().
            self._maybe_reload(force=True)
            user = self._users.get(digest)
            if user is None:
                raise Unauthorized("Unauthorized")
        # Agents send the same header on every request: remember it rather than hash it each
        # time. Keyed by the whole header (a lookup in a hash table with a per-process random
        # hash reveals nothing about other tokens); bound to the token table it was found in,
        # so a reload that drops the token also drops this entry.
        if len(self._seen) >= 4096:
            self._seen.clear()
        if authorization_header is not None:
            self._seen[authorization_header] = (self._users, user)
        return user

    def __len__(self) -> int:
        return len(self._users)


# ---------------------------------------------------------------------------------------------
# Authorization


class Attributes(NamedTuple):
    """What a request wants to do, in the terms authorizers decide on.

    ``verb`` is the Kubernetes verb for resource requests (get, list, watch, create, update,
    patch, delete, deletecollection) and the lower-case HTTP method otherwise.

    A named tuple, not a frozen dataclass: every request makes one, and a frozen dataclass sets
    each field through ``object.__setattr__`` (1.2 µs against 0.3).
    """

    user: User
    verb: str
    namespace: str = ""
    resource: str = ""
    api_group: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True

    @property
    def read_only(self) -> bool:
        return self.verb in READ_ONLY_VERBS


class Authorizer(Protocol):
    def authorize(self, attrs: Attributes) -> bool: ...


class AlwaysAllow:
    """For development and for tests that are not about authorization."""

    def authorize(self, attrs: Attributes) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Policy:
    """One ABAC rule, already converted to Kubernetes' internal form (see _convert_v1beta1)."""

    user: str = ""
    group: str = ""
    readonly: bool = False
    api_group: str = ""
    resource: str = ""
    namespace: str = ""
    non_resource_path: str = ""

    def matches(self, attrs: Attributes) -> bool:
        return (
            self._subject_matches(attrs.user)
            and (attrs.read_only or not self.readonly)
            and (self._resource_matches(attrs) or self._non_resource_matches(attrs))
        )

    def _subject_matches(self, user: User) -> bool:
        # A rule names a user, a group or both; all that are named must match, and a rule that
        # names neither matches nobody.
        matched = False
        if self.user:
            if self.user == "*":
                matched = True
            elif self.user != user.name:
                return False
            else:
                matched = True
        if self.group:
            if self.group == "*":
                matched = True
            elif self.group not in user.groups:
                return False
            else:
                matched = True
        return matched

    def _resource_matches(self, attrs: Attributes) -> bool:
        return (
            attrs.resource_request
            and self.namespace in ("*", attrs.namespace)
            and self.resource in ("*", attrs.resource)
            and self.api_group in ("*", attrs.api_group)
        )

    def _non_resource_matches(self, attrs: Attributes) -> bool:
        if attrs.resource_request:
            return False
        rule = self.non_resource_path
        if rule == "*" or rule == attrs.path:
            return True
        return rule.endswith("*") and attrs.path.startswith(rule.rstrip("*"))


_V1BETA1_SPEC_FIELDS: Final = {
    "user": str,
    "group": str,
    "readonly": bool,
    "apiGroup": str,
    "resource": str,
    "namespace": str,
    "nonResourcePath": str,
}
_V0_FIELDS: Final = {"user": str, "group": str, "readonly": bool, "resource": str, "namespace": str}


def _typed(fields: dict[str, Any], spec: dict[str, type], what: str) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(spec))
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")
    for key, typ in spec.items():
        if key in fields and not isinstance(fields[key], typ):
            raise ValueError(f"{what} field {key!r} must be a {typ.__name__}")
    return fields


def _convert_v1beta1(spec: dict[str, Any]) -> Policy:
    user, group = spec.get("user", ""), spec.get("group", "")
    # In v1beta1 a "*" user or group means every authenticated subject, and nothing else.
    if user == "*" or group == "*":
        user, group = "", ALL_AUTHENTICATED
    return Policy(
        user=user,
        group=group,
        readonly=spec.get("readonly", False),
        api_group=spec.get("apiGroup", ""),
        resource=spec.get("resource", ""),
        namespace=spec.get("namespace", ""),
        non_resource_path=spec.get("nonResourcePath", ""),
    )


def _convert_v0(fields: dict[str, Any]) -> Policy:
    """The unversioned format of early Kubernetes, converted with its documented defaults."""
    user, group = fields.get("user", ""), fields.get("group", "")
    namespace, resource = fields.get("namespace", ""), fields.get("resource", "")
    if not user and not group:
        group = ALL_AUTHENTICATED
    if user == "*" or group == "*":
        user, group = "", ALL_AUTHENTICATED
    return Policy(
        user=user,
        group=group,
        readonly=fields.get("readonly", False),
        api_group="*",
        resource=resource or "*",
        namespace=namespace or "*",
        non_resource_path="*" if not namespace and not resource else "",
    )


def _parse_policy_line(line: str) -> Policy:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "apiVersion" not in data and "kind" not in data:
        return _convert_v0(_typed(data, _V0_FIELDS, "policy"))
    if data.get("apiVersion") != ABAC_API_VERSION or data.get("kind") != "Policy":
        raise ValueError(
            f"unsupported apiVersion/kind {data.get('apiVersion')!r}/{data.get('kind')!r}: "
            f"expected {ABAC_API_VERSION!r}/'Policy'"
        )
    _typed(data, {"apiVersion": str, "kind": str, "spec": dict}, "policy")
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("policy has no 'spec' object")
    return _convert_v1beta1(_typed(spec, _V1BETA1_SPEC_FIELDS, "spec"))


class ABACAuthorizer:
    """Allows a request when any rule of a Kubernetes ABAC policy file matches it.

    Matching is Kubernetes': ``*`` is a wildcard in namespace, resource and apiGroup; an empty
    namespace matches only cluster-scoped requests and an empty apiGroup only the core group;
    ``readonly`` rules allow get, list and watch; ``nonResourcePath`` matches exactly, ``*``
    matches every path and ``/foo/*`` every path below ``/foo/``.
    """

    deny_reason: Final = "No policy matched."

    def __init__(self, policies: Iterable[Policy], *, cache_size: int = 4096) -> None:
        self.policies = tuple(policies)
        # Decisions depend only on these attributes, and a server sees few distinct combinations:
        # remembering them takes the policy scan off the request path.
        self._decisions: dict[tuple[object, ...], bool] = {}
        self._cache_size = cache_size

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ABACAuthorizer:
        """One JSON object per line; blank lines and ``#`` comments are skipped, and a bad line
        is a ValueError naming the file and line, as kube-apiserver reports it."""
        policies: list[Policy] = []
        text = Path(path).read_text(encoding="utf-8")
        for lineno, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                policies.append(_parse_policy_line(stripped))
            except ValueError as e:
                raise ValueError(
                    f"error reading policy file {path}, line {lineno}: {stripped}: {e}"
                ) from None
        return cls(policies)

    def authorize(self, attrs: Attributes) -> bool:
        key = (attrs.user.name, attrs.user.groups, attrs.verb, attrs.namespace, attrs.resource,
               attrs.api_group, attrs.resource_request, "" if attrs.resource_request else attrs.path)
        decision = self._decisions.get(key)
        if decision is None:
            decision = any(p.matches(attrs) for p in self.policies)
            if len(self._decisions) >= self._cache_size:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision


def _q(text: str) -> str:
    """Go's %q for the strings that appear here (JSON quoting agrees on all printable text)."""
    return json.dumps(text, ensure_ascii=False)


def forbidden_message(attrs: Attributes) -> str:
    """The API server's sentence for a denied request, e.g. ``User "alice" cannot create
    resource "widgets" in API group "example.com" in the namespace "default"``."""
    user = _q(attrs.user.name)
    if not attrs.resource_request:
        return f"User {user} cannot {attrs.verb} path {_q(attrs.path)}"
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    where = f"in the namespace {_q(attrs.namespace)}" if attrs.namespace else "at the cluster scope"
    return (
        f"User {user} cannot {attrs.verb} resource {_q(resource)} in API group {_q(attrs.api_group)} {where}"
    )


def forbidden_error(attrs: Attributes, reason: str = "") -> Forbidden:
    """The complete 403, worded and detailed as kube-apiserver's: ``widgets.example.com "w1"
    is forbidden: User "alice" cannot get resource ...``; ``reason`` is the authorizer's."""
    detail = forbidden_message(attrs)
    if reason:
        detail = f"{detail}: {reason}"
    if not attrs.resource_request or not attrs.resource:
        return Forbidden(f"forbidden: {detail}")
    qualified = attrs.resource + (f".{attrs.api_group}" if attrs.api_group else "")
    if attrs.name:
        message = f"{qualified} {_q(attrs.name)} is forbidden: {detail}"
    else:
        message = f"{qualified} is forbidden: {detail}"
    return Forbidden(
        message,
        details_name=attrs.name or None,
        details_kind=attrs.resource,
        details_group=attrs.api_group,
    )
