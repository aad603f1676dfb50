"""The template engine: level-triggered, coalesced renders of files from desired state.

Each template renders when something it read last time changed (its dependencies, recorded by
``Reader``), after the changes have been quiet for ``wait_min`` seconds but never later than
``wait_max`` after the first of them: a burst of a thousand changes is one render. A render
whose output equals the file is not written and its command is not run. A write replaces the
file atomically (``setpoint.files.write_atomic``). A template that fails to render (syntax,
a missing key: undefined is an error, a function or filter raising, whatever it raises) leaves
the file as it was and reports the template and line; a command that fails or times out is
retried with backoff until it succeeds or a new render supersedes it. One template's trouble
never stops the others, nor its own later renders.

Where the caller keeps a record of the content a command last succeeded for (the ``Template``
kind keeps it in status), a new entry given that record runs the command when the file holds
anything else, or when the last run failed: a command pending or failing when its process died
is not forgotten by the next one.
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
    command_succeeded_digest: str = ""  # the digest of the content the command last succeeded for
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

    def __init__(self, engine: Engine, key: str, config: TemplateConfig, command_done: str | None = None) -> None:
        self.engine = engine
        self.key = key
        self.config = config
        self.deps: set[Dependency] = set()
        self.outcome = Outcome()
        # The digest of the content the command is known to have last succeeded for; "" when it
        # never did or its last run failed (it runs whatever the file holds); None when nothing
        # is known (it runs only after this entry wrote the file, as consul-template does).
        self.command_done = command_done
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
        while True:
            try:
                await self._render_and_apply()
            except Exception as e:  # whatever it is, this template goes on being rendered
                log.exception("%s: render failed", self.config.name)
                self._report(False, "RenderFailed", f"template {self.config.name}: {type(e).__name__}: {e}")
            await self._quiet()

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
        except Exception as e:  # anything a template, a function or a filter raises: a RecursionError too
            self._report(False, "RenderFailed", _where(e, cfg.name))
            return
        content = text.encode()
        o.revision = str(reader.revision)
        o.digest = hashlib.sha256(content).hexdigest()
        o.rendered_at = _now()
        if cfg.destination is None:
            try:
                self.engine.on_output(self.key, text)
            except Exception:
                log.exception("%s: handing the output over failed", cfg.name)
            self._report(True, "Rendered", "rendered (dry run: nothing written)")
            return
        try:
            written = await asyncio.to_thread(write_atomic, cfg.destination, content, cfg.mode)
        except (OSError, ValueError) as e:  # ValueError: a path no file can have
            self._report(False, "WriteFailed", f"template {cfg.name}: writing {cfg.destination}: {e}")
            return
        if written:
            o.writes += 1
            log.info("%s: wrote %s (%d bytes)", cfg.name, cfg.destination, len(content))
        if cfg.command and (written or (self.command_done is not None and self.command_done != o.digest)):
            self._command_pending = True
        if self._command_pending:
            await self._run_command()
            return
        self._report(True, "Rendered", f"wrote {cfg.destination}" if written else f"{cfg.destination} is up to date")

    async def _run_command(self) -> None:
        cfg = self.config
        o = self.outcome
        o.commands += 1
        try:
            result: CommandResult = await run_command(cfg.command, cfg.command_timeout, cwd=cfg.command_dir)
        except OSError as e:  # no shell, no such directory: a failure like any other, retried
            result = CommandResult(None, f"cannot start the command: {e}")
        o.command_exit = result.exit_code
        o.command_output = result.output
        if result.ok:
            self._command_pending = False
            self._backoff.reset()
            o.command_succeeded_digest = o.digest
            if self.command_done is not None:
                self.command_done = o.digest
            self._report(True, "Rendered", f"wrote {cfg.destination}; command succeeded")
            return
        if self.command_done is not None:
            self.command_done = ""  # failed last: a successor runs it whatever the file holds
        delay = self._backoff.next()
        why = (f"timed out after {cfg.command_timeout:g}s and was killed" if result.timed_out
               else f"exited with code {result.exit_code}" if result.exit_code is not None
               else "could not start")
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
        try:
            self.engine.on_outcome(self.key, o)
        except Exception:
            log.exception("%s: reporting the outcome failed", self.config.name)

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

    def put(self, key: str, config: TemplateConfig, *, command_succeeded: str | None = None,
            command_failed: bool = False) -> Entry:
        """Add a template, or replace its config (it renders again at once).

        ``command_succeeded``, for a new entry, is the record its caller kept of the content (its
        sha256) the command last succeeded for ("" for never), and ``command_failed`` whether its
        last run failed: the command then runs when the file holds other content, or when the
        last run failed, even though this entry did not write the file. Without a record (None)
        it runs only after a write. A replaced entry keeps what the one before it knew, unless
        its command changed: a new command has never run for any content."""
        entry = self.entries.get(key)
        done = None if command_succeeded is None else "" if command_failed else command_succeeded
        succeeded = command_succeeded or ""
        if entry is not None:
            if entry.config == config:
                return entry
            entry.cancel()
            done, succeeded = entry.command_done, entry.outcome.command_succeeded_digest
            if config.command != entry.config.command:
                done, succeeded = (None if done is None else ""), ""
        entry = self.entries[key] = Entry(self, key, config, command_done=done)
        entry.outcome.command_succeeded_digest = succeeded
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
