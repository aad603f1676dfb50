"""``setpoint apply``, ``get``, ``delete`` and ``watch``: drive setpoint without kubectl.

Every command reads a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``, else ``./.setpoint/kubeconfig.yaml``), resolves kinds through the server's
discovery documents and talks to the API with the async client.

How ``apply`` updates an object that exists: it sends a JSON merge patch (RFC 7386) made of the
fields in the file (server-set metadata such as ``resourceVersion`` and ``uid`` removed). Fields
in the file win; fields the file does not mention are left alone, so removing a field from the
file does not remove it from the object (write ``field: null`` to remove it). There is no
last-applied annotation. The result is ``unchanged`` when the patch would change nothing (or the
server's resourceVersion did not move), else ``configured``.

Exit codes: 0 everything worked; 1 an object (or the connection, or the kubeconfig) failed,
after every object was tried; 2 the command line or its input files are wrong (nothing was sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Column as TableColumn
from rich.table import Table

from setpoint.agent.conditions import get_condition, is_converged
from setpoint.cli.app import app, console
from setpoint.client import (
    AlreadyExists,
    APIStatusError,
    Client,
    ClientConfig,
    ClientError,
    ConfigError,
    ConnectionFailed,
    FieldValidation,
    Gone,
    NotFound,
    Resource,
    ServerError,
)
from setpoint.types import Object

err_console = Console(stderr=True, soft_wrap=True, highlight=False)

CRD_GROUP = "apiextensions.k8s.io"
CRD_RESOURCE = Resource(CRD_GROUP, "v1", "customresourcedefinitions", namespaced=False,
                        kind="CustomResourceDefinition")
# Kinds the server itself defines: they have no agent, so no convergence contract.
BUILTIN_GROUPS = frozenset({"", CRD_GROUP, "coordination.k8s.io"})
# Metadata the server sets; never sent by apply.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "managedFields", "selfLink")
CRD_SERVED_DEADLINE = 30.0  # seconds to wait for a new CRD's kind to appear in discovery
WATCH_IDLE_TIMEOUT = 30.0  # the server sends a bookmark every 5 s; silence this long is a dead stream


class CLIError(Exception):
    """A failure to report in one line and exit with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage_error(message: str) -> CLIError:
    return CLIError(message, 2)


# ---- options shared by every command -----------------------------------------------------------

KubeconfigOpt = Annotated[str | None, typer.Option(
    "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, ./.setpoint/kubeconfig.yaml).",
    show_default=False)]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Kubeconfig context (default: current-context).",
                                                 show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Namespace (default: the context's namespace, else 'default').", show_default=False)]
AllNamespacesOpt = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Across all namespaces.")]
SelectorOpt = Annotated[str | None, typer.Option(
    "--selector", "-l", help="Label selector, e.g. 'tier=front,env!=dev'.", show_default=False)]
FieldSelectorOpt = Annotated[str | None, typer.Option(
    "--field-selector", help="Field selector, e.g. 'metadata.name=web'.", show_default=False)]
FilesOpt = Annotated[list[str] | None, typer.Option(
    "--filename", "-f", help="A YAML or JSON file, a directory of them, or '-' for stdin. Repeatable.",
    show_default=False)]


class Session:
    """The client, the namespace to use, and discovery, for one command."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            self.config = ClientConfig.from_kubeconfig(kubeconfig, context)
        except (ConfigError, OSError) as e:
            raise CLIError(f"kubeconfig: {e}") from None
        self.explicit_namespace = namespace
        self.namespace = namespace or self.config.namespace or "default"
        self.client = Client(self.config, warning_handler=_print_warning)
        self.discovery = Discovery(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()


def _print_warning(text: str) -> None:
    err_console.print(f"Warning: {text}", markup=False)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run an async command; turn every expected failure into a message and an exit code."""
    try:
        code = asyncio.run(main())
    except CLIError as e:
        err_console.print(f"error: {e.message}", markup=False)
        raise typer.Exit(e.code) from None
    except APIStatusError as e:
        err_console.print(f"error: {status_message(e)}", markup=False)
        raise typer.Exit(1) from None
    except ClientError as e:
        err_console.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # the reader went away (`setpoint watch … | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def status_message(e: APIStatusError) -> str:
    """The server's Status message, and each cause's field that the message does not already name."""
    text = f"{e.reason or e.code}: {e.message}" if e.message else f"{e.code} {e.reason}"
    extra = [f"  {c.field}: {c.message}" if c.field else f"  {c.message}"
             for c in e.causes if (c.field and c.field not in e.message) or (not c.field and c.message
                                                                               and c.message not in e.message)]
    return "\n".join([text, *extra])


def describe_error(e: BaseException) -> str:
    if isinstance(e, APIStatusError):
        return status_message(e)
    return str(e)


# ---- discovery ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KindInfo:
    """One served kind: how to address it, and the names users may call it by."""

    resource: Resource
    singular: str
    short_names: tuple[str, ...] = ()
    has_status: bool = False

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def group(self) -> str:
        return self.resource.group

    @property
    def plural(self) -> str:
        return self.resource.plural

    @property
    def namespaced(self) -> bool:
        return self.resource.namespaced

    @property
    def qualified(self) -> str:
        """``widget.example.com``; ``namespace`` for core kinds (how kubectl names objects)."""
        return type_ref(self.kind, self.group)

    def ref(self, name: str) -> str:
        return f"{self.qualified}/{name}"

    @property
    def contract(self) -> Literal["converged", "established", "exists"]:
        """What ``--wait`` waits for: agents' kinds converge, CRDs get Established, the rest exist."""
        if self.group == CRD_GROUP and self.kind == "CustomResourceDefinition":
            return "established"
        if self.has_status and self.group not in BUILTIN_GROUPS:
            return "converged"
        return "exists"


def type_ref(kind: str, group: str) -> str:
    return f"{kind.lower()}.{group}" if group else kind.lower()


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


class Discovery:
    """The server's discovery documents, fetched on demand and cached for one command."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lists: dict[str, list[KindInfo]] = {}
        self._groups: list[str] | None = None

    async def _get(self, path: str) -> Object:
        # The client has no public call for non-resource paths (discovery documents).
        return await self.client._json("GET", path)

    async def kinds_in(self, api_version: str, refresh: bool = False) -> list[KindInfo]:
        if refresh or api_version not in self._lists:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            doc = await self._get(path)
            entries = [r for r in doc.get("resources") or [] if isinstance(r, dict)]
            subresources = {str(r.get("name")) for r in entries if "/" in str(r.get("name", ""))}
            group, _, version = api_version.rpartition("/")
            infos = []
            for r in entries:
                plural = str(r.get("name", ""))
                if not plural or "/" in plural:
                    continue
                infos.append(KindInfo(
                    Resource(group, version, plural, namespaced=bool(r.get("namespaced")), kind=str(r.get("kind", ""))),
                    singular=str(r.get("singularName") or str(r.get("kind", "")).lower()),
                    short_names=tuple(str(s) for s in r.get("shortNames") or ()),
                    has_status=f"{plural}/status" in subresources,
                ))
            self._lists[api_version] = infos
        return self._lists[api_version]

    async def for_kind(self, api_version: str, kind: str, refresh: bool = False) -> KindInfo:
        """The kind ``kind`` of ``api_version``; looked up again once when not found (a new CRD)."""
        for again in ((True,) if refresh else (False, True)):
            try:
                infos = await self.kinds_in(api_version, refresh=again)
            except NotFound:
                continue
            for info in infos:
                if info.kind == kind:
                    return info
        raise CLIError(f'the server does not serve kind "{kind}" in "{api_version}"')

    async def served(self, api_version: str, kind: str) -> bool:
        try:
            await self.for_kind(api_version, kind, refresh=True)
        except CLIError:
            return False
        return True

    async def all_kinds(self) -> list[KindInfo]:
        """Every kind: core v1 first, then each group's preferred version."""
        out = list(await self.kinds_in("v1"))
        if self._groups is None:
            doc = await self._get("/apis")
            self._groups = []
            for g in doc.get("groups") or []:
                pref = (g.get("preferredVersion") or {}).get("groupVersion") if isinstance(g, dict) else None
                if isinstance(pref, str) and pref:
                    self._groups.append(pref)
        for gv in self._groups:
            with contextlib.suppress(NotFound):
                out.extend(await self.kinds_in(gv))
        return out

    async def resolve(self, name: str) -> KindInfo:
        """A kind from what a user typed: plural, singular, kind, short name, or any of them
        qualified by group (``widgets.example.com``) or by version and group (``widgets.v1.example.com``)."""
        want = name.strip().lower()
        if not want:
            raise usage_error("a kind is required")
        kinds = await self.all_kinds()

        def names(info: KindInfo) -> list[str]:
            return [info.plural, info.singular, info.kind.lower(), *(s.lower() for s in info.short_names)]

        def rank(info: KindInfo, word: str) -> int:
            ns = names(info)
            return ns.index(word) if word in ns else len(ns)

        # Unqualified first (short names never contain dots); then NAME.GROUP and NAME.VERSION.GROUP.
        candidates = [i for i in kinds if want in names(i)]
        word = want
        if not candidates and "." in want:
            word, _, rest = want.partition(".")
            candidates = [i for i in kinds if word in names(i)
                          and rest in (i.group.lower(), f"{i.resource.version}.{i.group}".lower())]
            if not candidates:  # a version that is not the preferred one
                version, _, group = rest.partition(".")
                gv = f"{group}/{version}"
                with contextlib.suppress(NotFound):
                    candidates = [i for i in await self.kinds_in(gv) if word in names(i)]
        if not candidates:
            raise CLIError(f'the server doesn\'t have a resource type "{name}"')
        candidates.sort(key=lambda i: min(rank(i, word), 3))  # stable: core, then groups in server order
        return candidates[0]


# ---- reading manifests --------------------------------------------------------------------------

@dataclass
class Manifest:
    obj: Object
    source: str  # "file.yaml#2"

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = (self.obj.get("metadata") or {}).get("namespace")
        return ns if isinstance(ns, str) and ns else None

    @property
    def ref(self) -> str:
        return f"{type_ref(self.kind, group_of(self.api_version))}/{self.name}"

    @property
    def is_crd(self) -> bool:
        return self.kind == "CustomResourceDefinition" and group_of(self.api_version) == CRD_GROUP

    @property
    def is_namespace(self) -> bool:
        return self.kind == "Namespace" and self.api_version == "v1"


def read_manifests(paths: Iterable[str]) -> list[Manifest]:
    """Every object in the files (directories: their *.yaml, *.yml, *.json, sorted; '-': stdin).
    Raises a usage error for a missing path, unparsable input, or an object without
    apiVersion, kind or metadata.name."""
    out: list[Manifest] = []
    for p in paths:
        if p == "-":
            out.extend(_parse(sys.stdin.read(), "<stdin>", json_only=False))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix.lower() in (".yaml", ".yml", ".json"))
        elif path.exists():
            files = [path]
        else:
            raise usage_error(f'the path "{p}" does not exist')
        for f in files:
            try:
                text = f.read_text()
            except OSError as e:
                raise usage_error(f"cannot read {f}: {e}") from None
            out.extend(_parse(text, str(f), json_only=f.suffix.lower() == ".json"))
    return out


def _as_json(value: Any) -> Any:
    """What kubectl sends for a YAML document: YAML 1.1 reads a bare ``on:`` key as a boolean and
    dates as dates; JSON has only string keys, so they become "true", "2026-01-01" and so on."""
    if isinstance(value, dict):
        return {_key(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _parse(text: str, source: str, *, json_only: bool) -> list[Manifest]:
    try:
        docs: list[Any] = [json.loads(text)] if json_only else [_as_json(d) for d in yaml.safe_load_all(text)]
    except (yaml.YAMLError, ValueError) as e:
        raise usage_error(f"{source}: cannot parse: {e}") from None
    out: list[Manifest] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"{source}#{i}" if len(docs) > 1 else source
        is_list = (isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List")
                   and isinstance(doc.get("items"), list))
        items: list[Any] = doc["items"] if is_list else [doc]
        for j, obj in enumerate(items):
            at = f"{where} items[{j}]" if is_list else where
            if not isinstance(obj, dict):
                raise usage_error(f"{at}: not an object")
            meta = obj.get("metadata")
            missing = [k for k in ("apiVersion", "kind") if not isinstance(obj.get(k), str) or not obj.get(k)]
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta.get("name"):
                missing.append("metadata.name")
            if missing:
                raise usage_error(f"{at}: missing {', '.join(missing)}")
            out.append(Manifest(obj, at))
    return out


def apply_order(manifests: list[Manifest]) -> list[Manifest]:
    """CRDs first, then Namespaces, then everything else; file order within each."""
    return sorted(manifests, key=lambda m: 0 if m.is_crd else 1 if m.is_namespace else 2)


# ---- merge patch --------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: what the server computes for an ``application/merge-patch+json`` body."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def applied_fields(obj: Object) -> Object:
    """The object as a merge patch: without server-set metadata."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for k in SERVER_METADATA:
            meta.pop(k, None)
    return out


# ---- list + watch with resume --------------------------------------------------------------------

def object_key(obj: Object) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def resource_version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


async def follow(
    client: Client,
    resource: Resource,
    namespace: str | None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    on_trouble: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[str, Object]]:
    """List, then watch from the list's revision, forever.

    Yields ``("LIST", {"items": [...]})`` for the first list, then every ADDED, MODIFIED and
    DELETED event. A stream that ends or breaks is watched again from the last resourceVersion
    seen (events and bookmarks), after a backoff when the server is unreachable; when that
    revision has been compacted (410) it lists again and yields the differences against what it
    had seen as ADDED, MODIFIED and DELETED events. The first list's errors are raised.
    """
    known: dict[tuple[str, str], Object] = {}
    rv = ""
    listed = False
    need_list = True
    delay = 0.0
    while True:
        try:
            if need_list:
                page = await client.list_all(resource, namespace=namespace, label_selector=label_selector,
                                             field_selector=field_selector)
                fresh = {object_key(o): o for o in page.items}
                if not listed:
                    yield "LIST", {"items": page.items}
                    listed = True
                else:
                    for k, o in fresh.items():
                        old = known.get(k)
                        if old is None:
                            yield "ADDED", o
                        elif resource_version(old) != resource_version(o):
                            yield "MODIFIED", o
                    for k, o in known.items():
                        if k not in fresh:
                            yield "DELETED", o
                known = fresh
                rv = page.resource_version
                need_list = False
            quiet = True
            async with client.watch(resource, namespace=namespace, resource_version=rv,
                                    label_selector=label_selector, field_selector=field_selector,
                                    idle_timeout=WATCH_IDLE_TIMEOUT) as stream:
                async for event in stream:
                    quiet = False
                    delay = 0.0
                    if event.resource_version:
                        rv = event.resource_version
                    if event.type == "BOOKMARK":
                        continue
                    k = object_key(event.object)
                    if event.type == "DELETED":
                        known.pop(k, None)
                    else:
                        known[k] = event.object
                    yield event.type, event.object
            if quiet:  # a stream that ends at once, again and again, must not spin
                delay = min(max(delay * 2, 0.1), 10.0)
                await asyncio.sleep(delay)
        except Gone:
            need_list = True
            if on_trouble is not None:
                on_trouble(f"revision {rv} is no longer available; listing again")
        except (ConnectionFailed, ServerError) as e:
            if not listed:
                raise
            delay = min(max(delay * 2, 0.5), 10.0)
            if on_trouble is not None:
                on_trouble(f"watch interrupted ({e}); resuming from revision {rv} in {delay:g}s")
            await asyncio.sleep(delay)


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

    with WaitDisplay(targets, title) as display:

        def changed() -> None:
            display.update()
            if all(t.done for t in targets):
                all_done.set()

        async def watch_group(resource: Resource, namespace: str | None, members: list[Target]) -> None:
            by_name = {t.name: t for t in members}
            selector = f"metadata.name={members[0].name}" if len(by_name) == 1 else None
            try:
                async for kind, obj in follow(client, resource, namespace, field_selector=selector,
                                              on_trouble=display.note):
                    if kind == "LIST":
                        seen = {object_key(o)[1]: o for o in obj["items"]}
                        for t in members:
                            t.obj = seen.get(t.name)
                            t.seen = True
                    else:
                        member = by_name.get(object_key(obj)[1])
                        if member is None:
                            continue
                        member.obj = None if kind == "DELETED" else obj
                    changed()
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


# ---- apply ---------------------------------------------------------------------------------------

APPLY_HELP = (
    "Create or update the objects in files, optionally waiting until they are ready.\n\n"
    "CRDs are applied first, then Namespaces, then the rest. An existing object is updated with a "
    "merge patch of the fields in the file; each object is reported as created, configured or "
    "unchanged. With --wait, waits until every object is converged (observedGeneration == "
    "generation and Ready=True; CRDs: Established; kinds without an agent: until they exist). "
    "A field the kind's schema does not know is an error (--validate=strict, as kubectl's default); "
    "--validate=warn applies the object without it and prints a warning, --validate=ignore drops it silently."
)

# kubectl's --validate values; true/false are its older spellings of strict/ignore.
VALIDATE_MODES: dict[str, FieldValidation] = {
    "strict": "Strict", "true": "Strict", "warn": "Warn", "ignore": "Ignore", "false": "Ignore"}


@app.command(help=APPLY_HELP)
def apply(
    filename: FilesOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every applied object is converged.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (0: no limit).")] = 300.0,
    validate: Annotated[str, typer.Option(
        "--validate", help="Fields the schema does not know: strict (an error), warn or ignore.")] = "strict",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    if not filename:
        raise typer.BadParameter("give at least one -f FILE|DIR|-", param_hint="-f")
    field_validation = VALIDATE_MODES.get(validate.lower())
    if field_validation is None:
        raise typer.BadParameter(f"{validate!r}: must be strict, warn or ignore", param_hint="--validate")

    async def main() -> int:
        manifests = read_manifests(filename)
        if not manifests:
            raise usage_error(f"no objects in {', '.join(filename)}")
        session = Session(kubeconfig, context, namespace)
        try:
            return await _apply(session, apply_order(manifests), wait, timeout, field_validation)
        finally:
            await session.aclose()

    run(main)


async def _apply(session: Session, manifests: list[Manifest], wait: bool, timeout: float,
                 field_validation: FieldValidation) -> int:
    failed = 0
    targets: list[Target] = []
    for m in manifests:
        try:
            info, ns, result = await _apply_one(session, m, field_validation)
        except (ClientError, CLIError) as e:
            failed += 1
            text = e.message if isinstance(e, CLIError) else describe_error(e)
            where = f" -n {m.namespace or session.namespace}" if m.namespace else ""
            err_console.print(f"error: {m.ref}{where} ({m.source}): {text}", markup=False)
            if isinstance(e, ConnectionFailed):
                left = len(manifests) - manifests.index(m) - 1
                if left:
                    err_console.print(f"error: {left} more object(s) not applied: the server is unreachable",
                                      markup=False)
                break
            continue
        print(f"{info.ref(m.name)} {result}", flush=True)
        if m.is_crd:
            await _wait_served(session, m)
        targets.append(Target(info, ns, m.name, info.contract))
    if wait and targets:
        pending = await wait_for(session.client, targets, timeout,
                                 f"waiting for {len(targets)} object(s) to be ready")
        if pending:
            errors = [t for t in pending if t.error]
            slow = [t for t in pending if not t.error]
            if slow:
                err_console.print(f"error: timed out after {timeout:g}s; not ready:", markup=False)
            for t in slow + errors:
                err_console.print(f"  {t.label}: {t.state()}", markup=False)
            return 1
    return 1 if failed else 0


async def _apply_one(session: Session, m: Manifest,
                     field_validation: FieldValidation) -> tuple[KindInfo, str | None, str]:
    info = await session.discovery.for_kind(m.api_version, m.kind)
    ns: str | None = None
    if info.namespaced:
        if m.namespace and session.explicit_namespace and m.namespace != session.explicit_namespace:
            raise CLIError(f"the object's namespace {m.namespace!r} does not match "
                           f"--namespace {session.explicit_namespace!r}")
        ns = m.namespace or session.namespace
    body = applied_fields(m.obj)
    if info.namespaced:
        body["metadata"]["namespace"] = ns
    else:
        body["metadata"].pop("namespace", None)
    client = session.client
    for _ in range(3):
        try:
            live = await client.get(info.resource, m.name, namespace=ns)
        except NotFound:
            try:
                await client.create(info.resource, body, namespace=ns, field_validation=field_validation)
            except AlreadyExists:
                continue  # created meanwhile: patch it instead
            return info, ns, "created"
        if merge_patch(live, body) == live:
            return info, ns, "unchanged"
        out = await client.patch(info.resource, m.name, body, namespace=ns, patch_type="merge",
                                 field_validation=field_validation)
        return info, ns, "unchanged" if resource_version(out) == resource_version(live) else "configured"
    raise CLIError("the object was created and deleted repeatedly while applying; try again")


async def _wait_served(session: Session, m: Manifest) -> None:
    """Until discovery lists the new CRD's kind in each served version (with a deadline)."""
    spec = m.obj.get("spec") or {}
    group = spec.get("group")
    kind = (spec.get("names") or {}).get("kind")
    versions = [v.get("name") for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("served", True)]
    if not isinstance(group, str) or not isinstance(kind, str):
        return
    deadline = asyncio.get_running_loop().time() + CRD_SERVED_DEADLINE
    delay = 0.02
    for version in versions:
        while not await session.discovery.served(f"{group}/{version}", kind):
            if asyncio.get_running_loop().time() > deadline:
                err_console.print(f"warning: {kind} in {group}/{version} is not served after "
                                  f"{CRD_SERVED_DEADLINE:g}s", markup=False)
                return
            await asyncio.sleep(delay)  # discovery cannot be watched: back off between looks
            delay = min(delay * 2, 1.0)


# ---- get -----------------------------------------------------------------------------------------

class Output(enum.StrEnum):
    table = "table"
    wide = "wide"
    yaml = "yaml"
    json = "json"
    name = "name"


@dataclass
class Column:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0


# Columns of the kinds the server defines itself (custom resources get their CRD's columns).
BUILTIN_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "namespaces"): [Column("Status", ".status.phase")],
    ("", "events"): [Column("Type", ".type"), Column("Reason", ".reason"),
                     Column("Object", ".involvedObject.name"), Column("Message", ".message")],
    ("coordination.k8s.io", "leases"): [Column("Holder", ".spec.holderIdentity")],
    (CRD_GROUP, "customresourcedefinitions"): [Column("Created At", ".metadata.creationTimestamp")],
}

_PATH_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_$\-]+)"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\[['"](?P<quoted>[^'"]*)['"]\]"""
    r"""|\[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<op>==|!=)\s*(?:(?P<q>["'])(?P<sval>.*?)(?P=q)|(?P<nval>[^)\s]+))\s*\)\]"""
)


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Values at a JSONPath in the subset printer columns use: ``.a.b``, ``.a[0].b``, ``.a[*]``,
    ``.a['b.c']`` and filters ``[?(@.type=="Ready")]``."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = expr.removeprefix("$")
    values = [obj]
    pos = 0
    while pos < len(expr):
        m = _PATH_TOKEN.match(expr, pos)
        if m is None:
            return []
        pos = m.end()
        out: list[Any] = []
        for v in values:
            if m.group("field") is not None or m.group("quoted") is not None:
                key = m.group("field") if m.group("field") is not None else m.group("quoted")
                if isinstance(v, dict) and key in v:
                    out.append(v[key])
            elif m.group("index") is not None:
                if isinstance(v, list):
                    if m.group("index") == "*":
                        out.extend(v)
                    else:
                        i = int(m.group("index"))
                        if -len(v) <= i < len(v):
                            out.append(v[i])
                elif isinstance(v, dict) and m.group("index") == "*":
                    out.extend(v.values())
            else:
                want = m.group("sval") if m.group("sval") is not None else m.group("nval")
                for item in v if isinstance(v, list) else []:
                    got = jsonpath(item, "." + m.group("fpath"))
                    text = _scalar(got[0]) if got else None
                    if (text == want) == (m.group("op") == "=="):
                        out.append(item)
        values = out
    return values


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def age(timestamp: Any, now: datetime | None = None) -> str:
    """kubectl's short human durations: 45s, 3m20s, 5h, 2d3h, 400d."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 else f"{days // 365}y"


def cell(obj: Object, col: Column) -> str:
    values = jsonpath(obj, col.json_path)
    if not values:
        return "<none>"
    if col.type == "date":
        return age(values[0])
    return ",".join(_scalar(v) for v in values)


async def printer_columns(session: Session, info: KindInfo) -> list[Column]:
    """The CRD's additionalPrinterColumns for the version served; built-in kinds' own columns."""
    builtin = BUILTIN_COLUMNS.get((info.group, info.plural))
    if builtin is not None or info.group in BUILTIN_GROUPS:
        return builtin or []
    try:
        crd = await session.client.get(CRD_RESOURCE, f"{info.plural}.{info.group}")
    except APIStatusError:
        return []
    for v in (crd.get("spec") or {}).get("versions") or []:
        if isinstance(v, dict) and v.get("name") == info.resource.version:
            return [Column(str(c.get("name", "")), str(c.get("jsonPath", "")), str(c.get("type", "string")),
                           int(c.get("priority") or 0))
                    for c in v.get("additionalPrinterColumns") or [] if isinstance(c, dict)]
    return []


def split_refs(kind: str, names: list[str]) -> tuple[str, list[str]]:
    """``get widget w1 w2`` or ``get widget/w1``: the kind and the names."""
    if "/" in kind and not names:
        k, _, n = kind.partition("/")
        if not k or not n:
            raise usage_error(f"expected KIND/NAME, got {kind!r}")
        return k, [n]
    if "/" in kind:
        raise usage_error("there is no need to give names when using KIND/NAME")
    return kind, names


GET_HELP = (
    "Show objects of one kind: a table, YAML, JSON or names.\n\n"
    "The table has NAME, the CRD's additionalPrinterColumns and AGE (NAMESPACE first with -A); "
    "-o wide adds the columns of priority > 0."
)


@app.command(help=GET_HELP)
def get(
    kind: Annotated[str, typer.Argument(
        help="Kind: plural, singular, kind, short name, plural.group, or KIND/NAME.")],
    names: Annotated[list[str] | None, typer.Argument(
        metavar="NAME", help="Object names (default: all).", show_default=False)] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    all_namespaces: AllNamespacesOpt = False,
    selector: SelectorOpt = None,
    field_selector: FieldSelectorOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    kind_arg, wanted = split_refs(kind, list(names or []))
    if wanted and (selector or field_selector):
        raise typer.BadParameter("names cannot be combined with --selector or --field-selector")
    if wanted and all_namespaces:
        raise typer.BadParameter("names cannot be combined with --all-namespaces")

    async def main() -> int:
        session = Session(kubeconfig, context, namespace)
        try:
            return await _get(session, kind_arg, wanted, output, all_namespaces, selector, field_selector)
        finally:
            await session.aclose()

    run(main)


async def _get(session: Session, kind_arg: str, names: list[str], output: Output, all_namespaces: bool,
               selector: str | None, field_selector: str | None) -> int:
    info = await session.discovery.resolve(kind_arg)
    ns = None if all_namespaces or not info.namespaced else session.namespace
    failed = 0
    items: list[Object] = []
    if names:
        for name in names:
            try:
                items.append(await session.client.get(info.resource, name, namespace=ns))
            except NotFound as e:
                failed += 1
                err_console.print(f"error: {status_message(e)}", markup=False)
    else:
        page = await session.client.list_all(info.resource, namespace=ns, label_selector=selector,
                                             field_selector=field_selector)
        items = page.items
        if not items and output in (Output.table, Output.wide):
            where = f" in {ns} namespace" if ns else ""
            err_console.print(f"No resources found{where}.", markup=False)
            return 0
    for obj in items:
        obj.setdefault("apiVersion", info.resource.api_version)
        obj.setdefault("kind", info.kind)
    if output is Output.name:
        for obj in items:
            print(info.ref(object_key(obj)[1]))
    elif output in (Output.yaml, Output.json):
        doc: Object = items[0] if len(names) == 1 and items else {
            "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}
        if output is Output.json:
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), end="")
    elif items:
        columns = await printer_columns(session, info)
        wide = output is Output.wide
        shown = [c for c in columns if (c.priority == 0 or wide)
                 and c.json_path.strip() not in (".metadata.creationTimestamp", "{.metadata.creationTimestamp}")]
        with_ns = all_namespaces and info.namespaced
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", highlight=False)
        if with_ns:
            table.add_column("NAMESPACE", no_wrap=True)
        table.add_column("NAME", no_wrap=True)
        for c in shown:
            table.add_column(c.name.upper(), no_wrap=c.type != "string",
                             justify="right" if c.type in ("integer", "number") else "left")
        table.add_column("AGE", no_wrap=True)
        for obj in items:
            nsname, name = object_key(obj)
            row = [nsname] if with_ns else []
            row += [name, *(cell(obj, c) for c in shown), age((obj.get("metadata") or {}).get("creationTimestamp"))]
            table.add_row(*row)
        print_table(table)
    return 1 if failed else 0


def print_table(table: Table) -> None:
    """A terminal gets a table that fits its width; a pipe or a file gets every cell whole,
    without trailing blanks."""
    if console.is_terminal:
        console.print(table)
        return
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, highlight=False).print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    sys.stdout.flush()


# ---- delete --------------------------------------------------------------------------------------

class Cascade(enum.StrEnum):
    background = "background"
    foreground = "foreground"
    orphan = "orphan"


DELETE_HELP = (
    "Delete objects, waiting until they are gone.\n\n"
    "Objects are named by kind and name, by a label selector, or by files (deleted in reverse "
    "apply order: objects, then Namespaces, then CRDs). --wait (the default) waits until their "
    "finalizers are done."
)


@app.command(help=DELETE_HELP)
def delete(
    kind: Annotated[str | None, typer.Argument(
        help="Kind (as for get), or KIND/NAME.", show_default=False)] = None,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="NAME", help="Object names.", show_default=False)] = None,
    filename: FilesOpt = None,
    selector: SelectorOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                                       help="Wait until the objects are gone (their finalizers done).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (0: no limit).")] = 300.0,
    cascade: Annotated[Cascade, typer.Option(help="What happens to dependents.")] = Cascade.background,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found",
                                                   help="An object that does not exist is not an error.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    refs: list[str] = []
    if filename:
        if kind or names or selector:
            raise typer.BadParameter("give either -f FILE or KIND NAME..., not both")
    else:
        if not kind:
            raise typer.BadParameter("give KIND NAME..., KIND -l SELECTOR, KIND/NAME or -f FILE")
        kind, refs = split_refs(kind, list(names or []))
        if not refs and not selector:
            raise typer.BadParameter("give the names of the objects to delete, or --selector")
        if refs and selector:
            raise typer.BadParameter("names cannot be combined with --selector")

    async def main() -> int:
        manifests = list(reversed(apply_order(read_manifests(filename)))) if filename else []
        session = Session(kubeconfig, context, namespace)
        try:
            return await _delete(session, kind, refs, selector, manifests, wait, timeout, cascade, ignore_not_found)
        finally:
            await session.aclose()

    run(main)


async def _delete(session: Session, kind: str | None, names: list[str], selector: str | None,
                  manifests: list[Manifest], wait: bool, timeout: float, cascade: Cascade,
                  ignore_not_found: bool) -> int:
    todo: list[tuple[KindInfo | None, str | None, str, str]] = []  # kind, namespace, name, label for errors
    failed = 0
    if manifests:
        for m in manifests:
            try:
                info = await session.discovery.for_kind(m.api_version, m.kind)
            except CLIError as e:
                if ignore_not_found:
                    continue
                failed += 1
                err_console.print(f"error: {m.ref}: {e.message}", markup=False)
                continue
            todo.append((info, (m.namespace or session.namespace) if info.namespaced else None, m.name, m.ref))
    else:
        assert kind is not None
        info = await session.discovery.resolve(kind)
        ns = session.namespace if info.namespaced else None
        if selector:
            page = await session.client.list_all(info.resource, namespace=ns, label_selector=selector)
            names = [object_key(o)[1] for o in page.items]
            if not names:
                err_console.print("No resources found.", markup=False)
        todo.extend((info, ns, n, info.ref(n)) for n in names)
    policies: dict[Cascade, Literal["Background", "Foreground", "Orphan"]] = {
        Cascade.background: "Background", Cascade.foreground: "Foreground", Cascade.orphan: "Orphan"}
    policy = policies[cascade]
    pending: list[Target] = []
    for info_, ns_, name, label in todo:
        assert info_ is not None
        try:
            out = await session.client.delete(info_.resource, name, namespace=ns_, propagation_policy=policy)
        except NotFound as e:
            if not ignore_not_found:
                failed += 1
                err_console.print(f"error: {label}: {status_message(e)}", markup=False)
            continue
        except ClientError as e:
            failed += 1
            err_console.print(f"error: {label}: {describe_error(e)}", markup=False)
            if isinstance(e, ConnectionFailed):
                break
            continue
        still_there = out.get("kind") != "Status" and bool((out.get("metadata") or {}).get("deletionTimestamp"))
        if wait and still_there:
            pending.append(Target(info_, ns_, name, "gone", obj=out))
        elif still_there:
            fins = ", ".join(map(str, (out.get("metadata") or {}).get("finalizers") or []))
            print(f"{info_.ref(name)} deleted (waiting for finalizers: {fins})", flush=True)
        else:
            print(f"{info_.ref(name)} deleted", flush=True)
    if pending:
        left = await wait_for(session.client, pending, timeout, f"waiting for {len(pending)} object(s) to be deleted")
        for t in pending:
            if t not in left:
                print(f"{t.ref} deleted", flush=True)
        if left:
            err_console.print(f"error: timed out after {timeout:g}s; still there:", markup=False)
            for t in left:
                err_console.print(f"  {t.label}: {t.state()}", markup=False)
            failed += len(left)
    return 1 if failed else 0


# ---- watch ---------------------------------------------------------------------------------------

class WatchOutput(enum.StrEnum):
    line = "line"
    json = "json"


WATCH_HELP = (
    "Stream changes as lines: ADDED, MODIFIED, DELETED.\n\n"
    "Survives disconnects: it resumes from the last revision it saw, and lists again (reporting "
    "what changed meanwhile) if that revision is compacted."
)


@app.command(help=WATCH_HELP)
def watch(
    kind: Annotated[str, typer.Argument(help="Kind (as for get), or KIND/NAME.")],
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Only this object.", show_default=False)]
    = None,
    output: Annotated[WatchOutput, typer.Option(
        "--output", "-o", help="line: 'TYPE kind/name rv=N'; json: one watch event a line.")] = WatchOutput.line,
    watch_only: Annotated[bool, typer.Option(
        "--watch-only", help="Only changes from now on, no ADDED line for each existing object.")] = False,
    timeout: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0.0,
    all_namespaces: AllNamespacesOpt = False,
    selector: SelectorOpt = None,
    field_selector: FieldSelectorOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    kind_arg, names = split_refs(kind, [name] if name else [])
    if names and field_selector:
        raise typer.BadParameter("a name cannot be combined with --field-selector")

    async def main() -> int:
        session = Session(kubeconfig, context, namespace)
        try:
            run_it = _watch(session, kind_arg, names[0] if names else None, output, watch_only, all_namespaces,
                            selector, field_selector)
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await run_it
                return 0
            await run_it
            return 0
        finally:
            await session.aclose()

    run(main)


async def _watch(session: Session, kind_arg: str, name: str | None, output: WatchOutput, watch_only: bool,
                 all_namespaces: bool, selector: str | None, field_selector: str | None) -> None:
    info = await session.discovery.resolve(kind_arg)
    ns = None if all_namespaces or not info.namespaced else session.namespace
    fields = f"metadata.name={name}" if name else field_selector

    def emit(kind: str, obj: Object) -> None:
        obj.setdefault("apiVersion", info.resource.api_version)
        obj.setdefault("kind", info.kind)
        if output is WatchOutput.json:
            line = json.dumps({"type": kind, "object": obj}, separators=(",", ":"))
        else:
            obj_ns, obj_name = object_key(obj)
            line = f"{kind} {info.ref(obj_name)} rv={resource_version(obj)}"
            if all_namespaces and obj_ns:
                line += f" namespace={obj_ns}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def trouble(message: str) -> None:
        err_console.print(f"note: {message}", markup=False)

    async for kind, obj in follow(session.client, info.resource, ns, label_selector=selector,
                                  field_selector=fields, on_trouble=trouble):
        if kind == "LIST":
            if not watch_only:
                for item in obj["items"]:
                    emit("ADDED", item)
            continue
        emit(kind, obj)


__all__ = ["apply", "delete", "follow", "get", "jsonpath", "merge_patch", "watch"]
