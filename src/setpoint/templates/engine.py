"""The template engine: level-triggered, coalesced renders of files from desired state.

Each template renders when something it read last time changed (its dependencies, recorded by
``Reader``), after the changes have been quiet for ``wait_min`` seconds but never later than
``wait_max`` after the first of them: a burst of a thousand changes is one render. A render
whose output equals the file is not written and its command is not run. A write replaces the
file atomically (``setpoint.files.write_atomic``). A template that fails to render (syntax,
a missing key: undefined is an error, a function raising) leaves the file as it was and reports
the template and line; a command that fails or times out is retried with backoff until it
succeeds or a new render supersedes it. One template's trouble never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from setpoint.backoff import Backoff
from setpoint.client import Client, ClientError, Resource
from setpoint.files import write_atomic
from setpoint.templates.command import CommandResult, run_command
from setpoint.templates.reader import FILTERS, Caches, Dependency, NeedSync, Reader
from setpoint.templates.resolve import UnknownKind
from setpoint.types import Object

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 30.0


@dataclass(frozen=True)
class TemplateConfig:
    name: str  # how errors name the template: a file name, or "Template NAMESPACE/NAME"
    source: str = ""  # the template text, unless it is in a ConfigMap
    source_configmap: tuple[str, str] | None = None  # (name, key) in ``namespace``
    destination: Path | None = None  # None: hand the output to the engine's ``on_output`` (dry run)
    mode: int = 0o644
    command: str = ""
    command_timeout: float = 30.0
    command_dir: str | None = None  # where the command runs (None: this process's directory)
    wait_min: float = 0.0
    wait_max: float = 0.0  # 0: no bound beyond wait_min's quiet period
    namespace: str = "default"


@dataclass
class Outcome:
    """The last render of one template, as its status reports it."""

    ok: bool = False
    reason: str = "Pending"
    message: str = "not rendered yet"
    revision: str = ""  # the newest resourceVersion among what the render read
    digest: str = ""  # sha256 of the file's content
    rendered_at: str = ""
    command_exit: int | None = None
    command_output: str = ""
    renders: int = 0
    writes: int = 0
    commands: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RenderError(Exception):
    pass


def _where(e: BaseException, name: str) -> str:
    """``template NAME line N: message`` for an error raised while rendering."""
    if isinstance(e, jinja2.TemplateSyntaxError):
        return f"template {name} line {e.lineno}: {e.message}"
    line = None
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename == name:
            line = frame.lineno
    where = f"template {name}" + (f" line {line}" if line else "")
    return f"{where}: {type(e).__name__}: {e}"


class Entry:
    """One template: its config, its dependencies, its render loop."""

    def __init__(self, engine: Engine, key: str, config: TemplateConfig) -> None:
        self.engine = engine
        self.key = key
        self.config = config
        self.deps: set[Dependency] = set()
        self.outcome = Outcome()
        self.first_done = asyncio.Event()
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()
        self._first_change = 0.0
        self._last_change = 0.0
        self._command_pending = False
        self._backoff = Backoff(initial=1.0, cap=60.0)
        self._compiled: tuple[str, jinja2.Template] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def mark_dirty(self) -> None:
        now = asyncio.get_running_loop().time()
        if not self._dirty.is_set():
            self._first_change = now
            self._dirty.set()
        self._last_change = now
        self._changed.set()

    async def run(self) -> None:
        await self._render_and_apply()
        while True:
            await self._quiet()
            await self._render_and_apply()

    async def _quiet(self) -> None:
        """Until changes stopped for ``wait_min``, or ``wait_max`` after the first of them."""
        await self._dirty.wait()
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            deadline = self._last_change + cfg.wait_min
            if cfg.wait_max:
                deadline = min(deadline, self._first_change + cfg.wait_max)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: see setpoint.tasks
                    await self._changed.wait()
        self._dirty.clear()

    def _template(self, source: str) -> jinja2.Template:
        if self._compiled is None or self._compiled[0] != source:
            self._compiled = (source, self.engine.environment(self.config.name, source))
        return self._compiled[1]

    async def _render(self) -> tuple[str, Reader]:
        cfg = self.config
        while True:
            reader = Reader(self.engine.caches, cfg.namespace)
            try:
                try:
                    source = cfg.source
                    if cfg.source_configmap is not None:
                        name, key = cfg.source_configmap
                        data = reader.configmap(name)
                        if key not in data:
                            raise RenderError(f"template {cfg.name}: ConfigMap {cfg.namespace}/{name} has no key "
                                              f"{key!r}")
                        source = data[key]
                    text = self._template(source).render(reader.functions())
                    return text, reader
                finally:
                    self.deps = reader.deps  # what it read so far: a change to it may fix a failure
            except NeedSync as e:
                try:
                    await e.informer.wait_synced(SYNC_TIMEOUT)
                except (ClientError, TimeoutError) as err:
                    raise RenderError(f"template {cfg.name}: cannot read {e.informer.resource.plural}: "
                                      f"{err}") from err

    async def _render_and_apply(self) -> None:
        cfg = self.config
        o = self.outcome
        o.renders += 1
        try:
            text, reader = await self._render()
        except RenderError as e:
            self._report(False, "RenderFailed", str(e))
            return
        except (jinja2.TemplateError, UnknownKind, ArithmeticError, LookupError, TypeError, ValueError,
                AttributeError) as e:
            self._report(False, "RenderFailed", _where(e, cfg.name))
            return
        content = text.encode()
        o.revision = str(reader.revision)
        o.digest = hashlib.sha256(content).hexdigest()
        o.rendered_at = _now()
        if cfg.destination is None:
            self.engine.on_output(self.key, text)
            self._report(True, "Rendered", "rendered (dry run: nothing written)")
            return
        try:
            written = await asyncio.to_thread(write_atomic, cfg.destination, content, cfg.mode)
        except OSError as e:
            self._report(False, "WriteFailed", f"template {cfg.name}: writing {cfg.destination}: {e}")
            return
        if written:
            o.writes += 1
            self._command_pending = bool(cfg.command)
            log.info("%s: wrote %s (%d bytes)", cfg.name, cfg.destination, len(content))
        if self._command_pending:
            await self._run_command()
            return
        self._report(True, "Rendered", f"wrote {cfg.destination}" if written else f"{cfg.destination} is up to date")

    async def _run_command(self) -> None:
        cfg = self.config
        o = self.outcome
        o.commands += 1
        result: CommandResult = await run_command(cfg.command, cfg.command_timeout, cwd=cfg.command_dir)
        o.command_exit = result.exit_code
        o.command_output = result.output
        if result.ok:
            self._command_pending = False
            self._backoff.reset()
            self._report(True, "Rendered", f"wrote {cfg.destination}; command succeeded")
            return
        delay = self._backoff.next()
        why = (f"timed out after {cfg.command_timeout:g}s and was killed" if result.timed_out
               else f"exited with code {result.exit_code}")
        last = result.output.strip().splitlines()[-1:] or [""]
        if last[0]:
            why += f" ({last[0][:200]})"
        self._report(False, "CommandFailed", f"template {cfg.name}: the command {why}; retrying in {delay:.1f}s")
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(delay, self.mark_dirty)

    def _report(self, ok: bool, reason: str, message: str) -> None:
        o = self.outcome
        o.ok, o.reason, o.message = ok, reason, message
        if not ok:
            log.warning("%s", message)
        self.first_done.set()
        self.engine.on_outcome(self.key, o)

    def cancel(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self.task is not None:
            self.task.cancel()


@dataclass
class Engine:
    """Templates over one client's informers. Owns one task per template; :meth:`close` ends them."""

    client: Client
    on_outcome: Callable[[str, Outcome], None] = lambda key, outcome: None
    on_output: Callable[[str, str], None] = lambda key, text: None
    entries: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.caches = Caches(self.client, self._changed)
        self._env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                         autoescape=False)
        self._env.filters.update(FILTERS)

    def environment(self, name: str, source: str) -> jinja2.Template:
        """``source`` compiled under ``name``, so that errors say which template and line."""
        code = self._env.compile(source, name=name, filename=name)
        return self._env.template_class.from_code(self._env, code, self._env.make_globals(None))

    def _changed(self, res: Resource, obj: Object, old: Object | None) -> None:
        for entry in self.entries.values():
            if any(d.resource == res and (d.matches(obj) or (old is not None and d.matches(old)))
                   for d in entry.deps):
                entry.mark_dirty()

    def put(self, key: str, config: TemplateConfig) -> Entry:
        """Add a template, or replace its config (it renders again at once)."""
        entry = self.entries.get(key)
        if entry is not None:
            if entry.config == config:
                return entry
            entry.cancel()
        entry = self.entries[key] = Entry(self, key, config)
        entry.task = asyncio.get_running_loop().create_task(entry.run(), name=f"template:{key}")
        return entry

    async def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            entry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task  # type: ignore[misc]

    async def close(self) -> None:
        for key in list(self.entries):
            await self.remove(key)
        await self.caches.stop()


__all__ = ["Engine", "Entry", "Outcome", "TemplateConfig"]
