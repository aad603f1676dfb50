"""NATS names both sides agree on: the server publishes under them, agents subscribe to them.

Every name starts with the control plane's prefix (``setpoint`` unless ``serve --nats-prefix``
says otherwise), so several control planes can share one NATS; the server tells agents its
prefix in ``GET /transfer``. With prefix P:

- ``P.interrupt.GROUP.PLURAL``: core NATS, payload ``{"key": "ns/name", "revision": R}`` (an
  interrupt says only what changed and when; the agent fetches it);
- ``P.command.GROUP.PLURAL.NAMESPACE.NAME`` on the JetStream stream ``P_COMMANDS`` that keeps one
  message per subject: the object's newest state (the last state and type ``DELETED`` for a
  delete), with headers ``Setpoint-Type`` and ``Setpoint-Revision``;
- ``P.command._seed``: the revision of the last complete publication of every object, so an
  agent can tell a complete stream from one that was purged or is still being filled.

Subjects are dot-separated tokens, so each part of a key is escaped into one token (a group like
``example.com`` or an object name like ``web.1`` holds dots): ``%`` and the characters NATS gives
a meaning to (``.``, ``*``, ``>``, whitespace) become ``%XX``. The core group is ``core``; a
cluster-scoped object's namespace token is ``_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "setpoint"
TYPE_HEADER = "Setpoint-Type"
REVISION_HEADER = "Setpoint-Revision"

_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "\r": "%0D", "\n": "%0A"}
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+\Z")


def token(text: str) -> str:
    """``text`` as exactly one subject token."""
    if not text:
        return "_"
    return "".join(_ESCAPES.get(c, c) for c in text)


def group_token(group: str) -> str:
    return token(group) if group else "core"


@dataclass(frozen=True)
class Subjects:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"NATS prefix {self.prefix!r} must be letters, digits, '_' or '-'")

    @property
    def interrupt_prefix(self) -> str:
        return f"{self.prefix}.interrupt"

    @property
    def command_prefix(self) -> str:
        return f"{self.prefix}.command"

    @property
    def command_stream(self) -> str:
        return f"{self.prefix}_COMMANDS"

    @property
    def seed(self) -> str:
        return f"{self.command_prefix}._seed"

    def interrupt(self, group: str, plural: str) -> str:
        return f"{self.interrupt_prefix}.{group_token(group)}.{token(plural)}"

    def command(self, group: str, plural: str, namespace: str, name: str) -> str:
        return f"{self.command_prefix}.{group_token(group)}.{token(plural)}.{token(namespace)}.{token(name)}"

    def command_filter(self, group: str, plural: str, namespace: str | None = None) -> str:
        """The subjects of one kind (in one namespace) on the command stream."""
        base = f"{self.command_prefix}.{group_token(group)}.{token(plural)}"
        return f"{base}.{token(namespace)}.*" if namespace else f"{base}.>"
