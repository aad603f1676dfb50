"""Following a kind for ``setpoint watch`` and ``--wait``: the SDK's informer, with what it
says about the network shown to the user.

The informer already lists, watches from the list's revision, resumes a broken stream from the
last revision it saw, lists again on 410 and hands over only the differences; the commands
register handlers and print. What a command adds is a check before it starts (the informer
retries a refused list for ever, as an agent should; a command answers at once that the kind
is forbidden or missing) and the informer's log lines as notes on stderr.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from setpoint.agent.informer import Informer
from setpoint.backoff import Backoff
from setpoint.cli.objects.common import WATCH_IDLE_TIMEOUT
from setpoint.client import Client, Resource
from setpoint.types import Object

# What the informer and the transports say while they follow the server.
_NOTE_LOGGERS = ("setpoint.agent.informer", "setpoint.transfer")


def namespaced_name(obj: Object) -> tuple[str, str]:
    """(namespace, name): what the commands sort and match by. (The SDK's ``object_key`` is the
    ``namespace/name`` string its caches are keyed by.)"""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def resource_version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class _Notes(logging.Handler):
    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._note = note

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self._note(message)


@contextlib.contextmanager
def informer_notes(note: Callable[[str], None]) -> Iterator[None]:
    """While it lasts, what the informer logs (a stream resumed, a revision compacted, the
    server unreachable and back) goes to ``note``."""
    handler = _Notes(note)
    loggers = [logging.getLogger(name) for name in _NOTE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@contextlib.asynccontextmanager
async def following(
    client: Client, resource: Resource, namespace: str | None, *, label_selector: str | None = None,
    field_selector: str | None = None,
) -> AsyncIterator[Informer]:
    """A running informer over what the command follows, once a first list has been allowed.

    The first list here raises what the server says (403, 404, 400 on a selector) as the
    command's answer; after it the informer owns the following, and handlers added before
    its first list see every object as added."""
    await client.list(resource, namespace=namespace, label_selector=label_selector,
                      field_selector=field_selector, limit=1)
    informer = Informer(client, resource, namespace=namespace, label_selector=label_selector,
                        field_selector=field_selector, idle_timeout=WATCH_IDLE_TIMEOUT,
                        backoff=Backoff(initial=0.5, cap=10.0))
    async with informer:
        yield informer
