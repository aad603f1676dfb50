"""The node side of Templates: each Template assigned to this node is rendered by the agent's
template engine (``setpoint.templates``), which re-renders it when an object it read changes.

The engine renders on its own schedule (quiescence, retries of a failing command); each outcome
puts the Template's key back on the work queue, and the reconcile that follows reports it in
status. Deleting a Template stops its rendering and leaves the file where it is: something on the
node may still read it.

The status keeps the digest of the content the command last succeeded for
(``status.command.succeededDigest``). An agent that starts (or restarts after dying between a
write and its command's success) hands that record to the engine, which runs the command when
the file holds other content, or when the last run failed: a pending or failing command
survives the agent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from setpoint.agent import Controller, Permanent, Result
from setpoint.client import Client
from setpoint.controllers.resources import TEMPLATES
from setpoint.templates import Engine, Outcome, TemplateConfig
from setpoint.types import Object

log = logging.getLogger(__name__)

FINALIZER = "setpoint.dev/template"


def config_of(obj: Object) -> TemplateConfig:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    namespace = meta.get("namespace", "default")
    source = spec.get("source") or {}
    inline, ref = source.get("inline"), source.get("configMapRef")
    if (inline is None) == (ref is None):
        raise Permanent("spec.source: give exactly one of inline and configMapRef", reason="InvalidSpec")
    destination = Path(str(spec.get("destination", "")))
    if not destination.is_absolute():
        raise Permanent("spec.destination must be an absolute path", reason="InvalidSpec")
    wait = spec.get("wait") or {}
    return TemplateConfig(
        name=f"Template {namespace}/{meta['name']}", source=str(inline or ""),
        source_configmap=(str(ref["name"]), str(ref["key"])) if ref else None,
        destination=destination, mode=int(str(spec.get("mode") or "0644"), 8),
        command=str(spec.get("command") or ""), command_timeout=float(spec.get("commandTimeoutSeconds") or 30),
        command_dir=str(destination.parent),
        wait_min=float(wait.get("minSeconds") or 0), wait_max=float(wait.get("maxSeconds") or 0),
        namespace=namespace)


def status_of(o: Outcome) -> dict[str, Any]:
    status: dict[str, Any] = {"renders": o.renders, "writes": o.writes}
    if o.digest:
        status.update(lastRenderRevision=o.revision, digest=o.digest, renderedAt=o.rendered_at)
    if o.commands:
        status["command"] = {"runs": o.commands, "exitCode": o.command_exit, "output": o.command_output}
        if o.command_succeeded_digest:
            status["command"]["succeededDigest"] = o.command_succeeded_digest
    return status


def command_record(obj: Object) -> tuple[str, bool]:
    """From a Template's status: the digest of the content its command last succeeded for ("":
    never), and whether its last run failed."""
    command = (obj.get("status") or {}).get("command") or {}
    return str(command.get("succeededDigest") or ""), bool(command.get("runs")) and command.get("exitCode") != 0


class TemplateController(Controller):
    resource = TEMPLATES
    finalizer = FINALIZER
    name = "templates"

    def __init__(self, client: Client, node: str, **kw: Any) -> None:
        super().__init__(client, field_selector=f"spec.nodeName={node}", **kw)
        self.node = node
        self.engine = Engine(client, on_outcome=self._rendered)

    def _rendered(self, key: str, outcome: Outcome) -> None:
        self.queue.add(key)  # report it: the reconcile writes the outcome into status

    async def reconcile(self, obj: Object) -> Result:
        key = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
        succeeded, failed = command_record(obj)
        entry = self.engine.put(key, config_of(obj), command_succeeded=succeeded, command_failed=failed)
        if not entry.first_done.is_set():
            return Result(ready=False, reason="Pending", message="rendering")
        o = entry.outcome
        return Result(status=status_of(o), ready=o.ok, reason=o.reason, message=o.message)

    async def finalize(self, obj: Object) -> None:
        await self.engine.remove(f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}")

    async def deleted(self, key: str) -> None:
        await self.engine.remove(key)  # gone, or moved to another node

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self.engine.close()


__all__ = ["TemplateController", "command_record", "config_of", "status_of"]
