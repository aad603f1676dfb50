"""NATS names both sides agree on: the server publishes under them, agents subscribe to them.

Subjects are dot-separated tokens, so the parts of a key are escaped into one token each (a group
like ``example.com`` or an object name like ``web.1`` holds dots): ``%`` and the characters NATS
gives a meaning to (``.``, ``*``, ``>``, whitespace) become ``%XX``.

- ``setpoint.interrupt.GROUP.PLURAL``: core NATS, payload ``{"key": "ns/name", "revision": R}``
  (an interrupt says only what changed and when; the agent fetches it);
- ``setpoint.command.GROUP.PLURAL.NAMESPACE.NAME``: the JetStream stream ``SETPOINT_COMMANDS``
  with one message per subject kept, the object's newest state (the last state and type
  ``DELETED`` for a delete), headers ``Setpoint-Type`` and ``Setpoint-Revision``;
- ``setpoint.command._seed``: the revision of the last complete publication of every object, so
  an agent can tell a complete stream from one that was purged or is still being filled.

The core group is ``core``; a cluster-scoped object's namespace token is ``_``.
"""

from __future__ import annotations

INTERRUPT_PREFIX = "setpoint.interrupt"
COMMAND_PREFIX = "setpoint.command"
COMMAND_STREAM = "SETPOINT_COMMANDS"
SEED_SUBJECT = f"{COMMAND_PREFIX}._seed"
TYPE_HEADER = "Setpoint-Type"
REVISION_HEADER = "Setpoint-Revision"

_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "\r": "%0D", "\n": "%0A"}


def token(text: str) -> str:
    """``text`` as exactly one subject token."""
    if not text:
        return "_"
    return "".join(_ESCAPES.get(c, c) for c in text)


def group_token(group: str) -> str:
    return token(group) if group else "core"


def interrupt_subject(group: str, plural: str) -> str:
    return f"{INTERRUPT_PREFIX}.{group_token(group)}.{token(plural)}"


def command_subject(group: str, plural: str, namespace: str, name: str) -> str:
    return f"{COMMAND_PREFIX}.{group_token(group)}.{token(plural)}.{token(namespace)}.{token(name)}"


def command_filter(group: str, plural: str, namespace: str | None = None) -> str:
    """The subjects of one kind (in one namespace) on the command stream."""
    base = f"{COMMAND_PREFIX}.{group_token(group)}.{token(plural)}"
    return f"{base}.{token(namespace)}.*" if namespace else f"{base}.>"
