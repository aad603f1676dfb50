"""``--wait``: until objects are converged, established, present or gone, with a live display."""


from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Column as TableColumn

from setpoint.agent.conditions import get_condition, is_converged
from setpoint.cli.app import console
from setpoint.cli.objects.common import err_console
from setpoint.cli.objects.discovery import KindInfo
from setpoint.cli.objects.follow import following, informer_notes, namespaced_name
from setpoint.cli.objects.session import describe_error
from setpoint.client import (
    Client,
    ClientError,
    Resource,
)
from setpoint.types import Object

# ---- waiting: converged, established, present or gone ---------------------------------------------

Check = Literal["converged", "established", "exists", "gone"]


@dataclass
class Target:
    info: KindInfo
    namespace: str | None
    name: str
    check: Check
    obj: Object | None = None
    error: str = ""
    seen: bool = False  # listed at least once: obj is known, not assumed

    @property
    def ref(self) -> str:
        return self.info.ref(self.name)

    @property
    def label(self) -> str:
        return f"{self.ref} -n {self.namespace}" if self.namespace else self.ref

    @property
    def done(self) -> bool:
        if self.error:
            return True
        if not self.seen:
            return False
        obj = self.obj
        if self.check == "gone":
            return obj is None
        if obj is None:
            return False
        if self.check == "exists":
            return True
        if self.check == "established":
            cond = get_condition(obj.get("status"), "Established")
            return cond is not None and cond.get("status") == "True"
        return is_converged(obj)

    def state(self) -> str:
        """One line on where the object stands."""
        if self.error:
            return f"error: {self.error}"
        if not self.seen:
            return "checking"
        obj = self.obj
        if self.check == "gone":
            if obj is None:
                return "deleted"
            fins = (obj.get("metadata") or {}).get("finalizers") or []
            return f"deleting, waiting for finalizers: {', '.join(map(str, fins))}" if fins else "deleting"
        if obj is None:
            return "not found"
        if self.check == "exists":
            return "exists"
        if self.check == "established":
            return "established" if self.done else "not established yet"
        if self.done:
            return "converged"
        status = obj.get("status") or {}
        generation = (obj.get("metadata") or {}).get("generation")
        observed = status.get("observedGeneration")
        ready = get_condition(status, "Ready")
        parts = []
        if observed != generation:
            parts.append(f"generation {generation} not observed yet"
                         + (f" (observedGeneration {observed})" if observed is not None else ""))
        if ready is None:
            parts.append("no Ready condition")
        else:
            text = f"Ready={ready.get('status', '')}"
            if ready.get("reason"):
                text += f" {ready['reason']}"
            if ready.get("message"):
                text += f": {ready['message']}"
            parts.append(text)
        return "; ".join(parts)


def parts(t: Target) -> list[tuple[str, str, str, bool]]:
    """The rows under a target, as (key, label, state, done): a Stack's resources, each with the
    phase its controller reports (while it applies, and while it is destroyed)."""
    if t.obj is None or t.info.kind != "Stack" or t.info.resource.group != "setpoint.dev":
        return []
    out = []
    for e in (t.obj.get("status") or {}).get("resources") or []:
        if not isinstance(e, dict):
            continue
        phase, message = str(e.get("phase", "")), str(e.get("message", ""))
        label = f"  └ {e.get('kind', '?')} {e.get('objectName', '')} ({e.get('name', '')})"
        state = f"{phase}: {message}" if message else phase
        out.append((f"{t.label}/{e.get('name')}", label, state, phase in ("Ready", "Deleted")))
    return out


class WaitDisplay:
    """Where each target stands: a live rich progress display (a row per target) on a terminal;
    on a pipe or a file, a line each time a target's state changes."""

    def __init__(self, targets: list[Target], title: str) -> None:
        self.targets = targets
        self.title = title
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(finished_text="✓"),
                TextColumn("{task.description}", markup=False, table_column=TableColumn(no_wrap=True)),
                TextColumn("{task.fields[state]}", markup=False, table_column=TableColumn(overflow="fold")),
                console=console, transient=False,
            )
        self.rows: dict[int, TaskID] = {}
        self.shown: dict[int, str] = {}
        self.part_rows: dict[str, TaskID] = {}
        self.shown_parts: dict[str, str] = {}

    def __enter__(self) -> WaitDisplay:
        if self.progress is not None:
            self.progress.start()
            self.progress.console.print(self.title, markup=False, highlight=False)
            for t in self.targets:
                self.rows[id(t)] = self.progress.add_task(t.label, total=1, state="…")
        else:
            print(self.title, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.update()
        if self.progress is not None:
            self.progress.stop()

    def update(self) -> None:
        for t in self.targets:
            state = t.state()
            if self.progress is not None:
                self.progress.update(self.rows[id(t)], state=state, completed=1 if t.done else 0)
            elif t.seen and self.shown.get(id(t)) != state:
                print(f"  {t.label}: {state}", flush=True)
            self.shown[id(t)] = state
            for key, label, part, done in parts(t):
                self._part(key, label, part, done)

    def _part(self, key: str, label: str, state: str, done: bool) -> None:
        """A row under its target: one of a Stack's resources."""
        if self.progress is not None:
            if key not in self.part_rows:
                self.part_rows[key] = self.progress.add_task(label, total=1, state=state)
            self.progress.update(self.part_rows[key], state=state, completed=1 if done else 0)
        elif self.shown_parts.get(key) != state:
            print(f"  {label}: {state}", flush=True)
        self.shown_parts[key] = state

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"  {message}", markup=False, highlight=False, style="dim")
        else:
            err_console.print(f"note: {message}", markup=False)


async def wait_for(client: Client, targets: list[Target], timeout: float, title: str) -> list[Target]:
    """Follow the targets until every one is done or ``timeout`` passes, showing where each
    stands. One list + watch per kind and namespace (no polling). Returns the targets that are
    not done, or failed."""
    groups: dict[tuple[Resource, str | None], list[Target]] = {}
    for t in targets:
        groups.setdefault((t.info.resource, t.namespace), []).append(t)
    all_done = asyncio.Event()

    with WaitDisplay(targets, title) as display, informer_notes(display.note):

        def changed() -> None:
            display.update()
            if all(t.done for t in targets):
                all_done.set()

        async def watch_group(resource: Resource, namespace: str | None, members: list[Target]) -> None:
            by_name = {t.name: t for t in members}
            selector = f"metadata.name={members[0].name}" if len(by_name) == 1 else None

            def seen(obj: Object | None, name: str) -> None:
                member = by_name.get(name)
                if member is not None and member.seen:  # the first list is taken whole, below
                    member.obj = obj
                    changed()

            try:
                async with following(client, resource, namespace, field_selector=selector) as informer:
                    informer.add_handler(on_add=lambda o: seen(o, namespaced_name(o)[1]),
                                         on_update=lambda old, new: seen(new, namespaced_name(new)[1]),
                                         on_delete=lambda o: seen(None, namespaced_name(o)[1]))
                    await informer.wait_synced()
                    listed = {namespaced_name(o)[1]: o for o in informer.list()}
                    for t in members:  # what the list lacks is known to be absent
                        t.obj = listed.get(t.name)
                        t.seen = True
                    changed()
                    await informer.wait_stopped()
            except ClientError as e:
                for t in members:
                    t.error = describe_error(e)
                changed()

        tasks = [asyncio.create_task(watch_group(r, ns, ms)) for (r, ns), ms in groups.items()]
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                await all_done.wait()
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return [t for t in targets if not t.done or t.error]


