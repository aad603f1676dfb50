"""Stacks: objects of any kind created as a dependency graph (``setpoint.stackgraph``).

Each reconcile looks at every resource of the Stack in dependency order: one whose dependencies
are all converged is created (or changed, by merge patch, when its filled-in template differs
from the object), as a child owned by the Stack, with at most ``spec.parallelism`` resources in
progress (written, not converged yet) at a time;
one whose dependency failed is blocked; the rest wait. References are filled from the converged
objects themselves. A resource removed from the template is deleted. Deleting the Stack deletes
its resources dependents first, each gone before what it depends on is touched.

"Converged": the object's Ready condition is True for its current generation; an object whose
kind reports no conditions (a ConfigMap) is converged once it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from setpoint.agent import Controller, NotReady, Permanent, Result
from setpoint.agent.conditions import get_condition
from setpoint.agent.controller import Watch
from setpoint.agent.informer import Informer
from setpoint.client import AlreadyExists, APIStatusError, Client, ClientError, NotFound, Resource
from setpoint.controllers.resources import STACKS
from setpoint.stackgraph import Graph, StackError, build, fill
from setpoint.types import Object

log = logging.getLogger(__name__)

FINALIZER = "setpoint.dev/stack"
STACK_LABEL = "setpoint.dev/stack"
STACK_NAMESPACE_LABEL = "setpoint.dev/stack-namespace"  # cluster-scoped children have no namespace of their own
RESOURCE_LABEL = "setpoint.dev/stack-resource"
APPLIED = "setpoint.dev/stack-applied"  # a digest of the filled-in template last written
# A safety net only: a Stack hears of its children's changes through watches on their kinds.
RECHECK_SECONDS = 10.0


def stack_of(child: Object) -> list[str]:
    """The key of the Stack a child belongs to, from the labels the Stack gave it."""
    labels = (child.get("metadata") or {}).get("labels") or {}
    name, ns = labels.get(STACK_LABEL), labels.get(STACK_NAMESPACE_LABEL)
    return [f"{ns}/{name}"] if name and ns else []


# The condition that says an object is done, by kind: setpoint's kinds and most controllers say
# Ready; a CustomResourceDefinition says Established; a Deployment-like kind says Available.
DONE_CONDITIONS = ("Ready", "Established", "Available")


def converged(obj: Object | None, reports_status: bool = False) -> bool:
    """Done for its current generation. An object whose status carries one of
    :data:`DONE_CONDITIONS` is converged when it is True for the current generation. One whose
    kind reports status (it has a status subresource) but that has reported nothing yet is not
    converged: a ProcessSet just created runs nothing yet. Otherwise (a ConfigMap, a Namespace
    with its phase) it is converged once it exists and its status, if any, is not behind."""
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return False
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    done = next((c for t in DONE_CONDITIONS if (c := get_condition(status, t)) is not None), None)
    if done is None:
        if reports_status and not status:
            return False
        return bool(status.get("observedGeneration", gen) == gen)
    observed = done.get("observedGeneration", status.get("observedGeneration", gen))
    return bool(done.get("status") == "True" and observed == gen)


def _merged(live: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(live) if isinstance(live, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merged(out.get(k), v)
    return out


def _digest(template: Object) -> str:
    """Of a filled-in template as the Stack wrote it, to tell a changed template from server defaults."""
    return hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _writable(body: Object) -> Object:
    return {k: v for k, v in body.items() if k != "status"}


def _compared(obj: Object) -> Object:
    """What a write can change: everything but status and what the server keeps in metadata."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid")}
    return {**_writable(obj), "metadata": meta}


class StackController(Controller):
    resource = STACKS
    finalizer = FINALIZER
    name = "stacks"

    def __init__(self, client: Client, **kw: Any) -> None:
        super().__init__(client, **kw)
        self._resources: dict[tuple[str, str], Resource] = {}
        self._reports_status: set[Resource] = set()
        self._in_sync: dict[str, str] = {}  # child uid -> the resourceVersion a dry run found in sync
        self._children_of: dict[Resource, Informer] = {}  # a kind -> the watch on its Stack children

    async def _resource(self, api_version: str, kind: str) -> Resource:
        key = (api_version, kind)
        if key not in self._resources:
            try:
                self._resources[key] = await self.client.resource_for(api_version, kind)
            except NotFound:
                raise NotReady(f"the server does not serve {kind} in {api_version} (yet)", retry_after=2.0,
                               reason="KindNotServed") from None
            if "status" in await self.client.subresources(self._resources[key]):
                self._reports_status.add(self._resources[key])
            # Its children of this kind tell the Stack when they change (converge, fail, go).
            self._children_of[self._resources[key]] = self.watch(
                Watch(self._resources[key], stack_of, label_selector=STACK_LABEL))
        return self._resources[key]

    def converged(self, res: Resource, obj: Object | None) -> bool:
        return converged(obj, res in self._reports_status)

    async def _get(self, res: Resource, name: str, namespace: str) -> Object | None:
        """A child as the watch on its kind has it (no request per child per pass); from the
        server while that watch has not synced, or outside a running controller (``plan``)."""
        cache = self._children_of.get(res)
        if cache is not None and cache.has_synced:
            return cache.get(f"{namespace}/{name}" if res.namespaced else name)
        try:
            return await self.client.get(res, name, namespace=namespace if res.namespaced else None)
        except NotFound:
            return None

    def _graph(self, stack: Object) -> Graph:
        try:
            return build(stack.get("spec") or {})
        except StackError as e:
            raise Permanent(str(e), reason="InvalidStack") from None

    async def _children(self, stack: Object, graph: Graph) -> dict[str, tuple[Resource, str, Object | None]]:
        ns = stack["metadata"].get("namespace", "default")
        out = {}
        for r in stack["spec"]["resources"]:
            t = r["template"]
            res = await self._resource(str(t.get("apiVersion", "")), str(t.get("kind", "")))
            name = str((t.get("metadata") or {}).get("name", ""))
            out[r["name"]] = (res, name, await self._get(res, name, ns))
        return out

    async def reconcile(self, obj: Object) -> Result:
        spec, meta = obj.get("spec") or {}, obj["metadata"]
        ns = meta.get("namespace", "default")
        graph = self._graph(obj)
        children = await self._children(obj, graph)
        params = spec.get("parameters") or {}
        objs = {n: c[2] for n, c in children.items() if c[2] is not None}
        done = {n for n, (res, _, live) in children.items() if self.converged(res, live)}
        templates = {r["name"]: r["template"] for r in spec["resources"]}
        phases: dict[str, tuple[str, str]] = {}
        # parallelism bounds the resources in progress, as Terraform's does its operations: one
        # written and not converged yet holds its slot until it converges (or fails).
        in_progress = sum(1 for n, (_, _, live) in children.items()
                          if live is not None and n not in done and not live["metadata"].get("deletionTimestamp"))
        budget = int(spec.get("parallelism") or 16) - in_progress
        writes = []
        for name in graph.order():
            res, obj_name, live = children[name]
            failed = [d for d in graph.deps[name] if phases.get(d, ("",))[0] in ("Failed", "Blocked")]
            if failed:
                phases[name] = ("Blocked", f"waits for {', '.join(sorted(failed))}, which failed")
                continue
            waiting = [d for d in graph.deps[name] if d not in done]
            if waiting:
                phases[name] = ("Pending", f"waits for {', '.join(sorted(waiting))}")
                continue
            try:
                body = fill(templates[name], params, objs)
            except KeyError as e:
                phases[name] = ("Pending", f"waits for a value: {e.args[0]}")
                continue
            body = self._owned(body, obj, name, ns, res)
            if live is None or await self._differs(res, live, body, ns):
                if budget <= 0:
                    phases[name] = ("Pending", "waits for a slot (spec.parallelism resources in progress)")
                    continue
                budget -= 1
                writes.append((name, res, obj_name, live, body))
                phases[name] = ("Creating" if live is None else "Updating", "")
            else:
                phases[name] = ("Ready", "") if name in done else ("Progressing", "not converged yet")
        results = await asyncio.gather(*(self._write(ns, *w) for w in writes))
        for (name, *_), error in zip(writes, results, strict=True):
            if error:
                phases[name] = ("Failed", error)
        for name in graph.order():  # what waits on a resource that just failed is blocked by it
            failed = [d for d in graph.deps[name] if phases[d][0] in ("Failed", "Blocked")]
            if failed and phases[name][0] == "Pending":
                phases[name] = ("Blocked", f"waits for {', '.join(sorted(failed))}, which failed")
        await self._delete_removed(obj, set(graph.names), ns)
        return self._report(obj, graph, children, phases)

    async def _differs(self, res: Resource, live: Object, body: Object, ns: str) -> bool:
        """Whether writing ``body`` would change ``live``. A template that changed since it was
        last written (its digest in an annotation) differs; else the object is compared with what
        a merge patch would make of it, and where that naive comparison cannot tell (the server
        defaults fields inside lists the template leaves out), the server answers a dry run,
        once per resourceVersion."""
        applied = (live["metadata"].get("annotations") or {}).get(APPLIED)
        if applied != body["metadata"]["annotations"][APPLIED]:
            return True
        if _merged(live, body) == live:
            return False
        uid, rv = str(live["metadata"].get("uid")), str(live["metadata"].get("resourceVersion"))
        if self._in_sync.get(uid) == rv:
            return False
        try:
            after = await self.client.patch(res, str(live["metadata"]["name"]), _writable(body),
                                            namespace=ns if res.namespaced else None, dry_run=True)
        except APIStatusError:
            return True  # the real write will say why
        if _compared(after) != _compared(live):
            return True  # changed behind the Stack's back: put it back
        if len(self._in_sync) > 100_000:
            self._in_sync.clear()
        self._in_sync[uid] = rv
        return False

    @staticmethod
    def _owned(body: Object, stack: Object, name: str, ns: str, res: Resource) -> Object:
        body = dict(body)
        meta = dict(body.get("metadata") or {})
        if res.namespaced:
            meta["namespace"] = ns
        meta["labels"] = {**(meta.get("labels") or {}), STACK_LABEL: stack["metadata"]["name"],
                          STACK_NAMESPACE_LABEL: ns, RESOURCE_LABEL: name}
        meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED: _digest(body)}
        meta["ownerReferences"] = [{"apiVersion": STACKS.api_version, "kind": "Stack",
                                    "name": stack["metadata"]["name"], "uid": stack["metadata"]["uid"],
                                    "controller": True, "blockOwnerDeletion": True}]
        body["metadata"] = meta
        return body

    async def _write(self, ns: str, name: str, res: Resource, obj_name: str, live: Object | None,
                     body: Object) -> str:
        """Create or patch one child; the error as text (empty when it worked)."""
        try:
            if live is None:
                try:
                    await self.client.create(res, body, namespace=ns if res.namespaced else None)
                except AlreadyExists:
                    # Made by someone else first (not labelled as ours, so not in the watch): the
                    # Stack takes it over, as kubectl apply would.
                    await self.client.patch(res, obj_name, _writable(body), namespace=ns if res.namespaced else None)
            else:
                await self.client.patch(res, obj_name, _writable(body), namespace=ns if res.namespaced else None)
            return ""
        except APIStatusError as e:
            if e.code in (409, 429) or e.code >= 500:
                return ""  # raced or busy: the next reconcile looks again
            return f"{e.code} {e.reason}: {e.message}"
        except ClientError as e:
            log.info("stack resource %s: %s", name, e)
            return ""

    async def _delete_removed(self, stack: Object, names: set[str], ns: str) -> None:
        for entry in (stack.get("status") or {}).get("resources") or []:
            if entry.get("name") in names or not entry.get("kind"):
                continue
            res = await self._resource(str(entry.get("apiVersion", "")), str(entry["kind"]))
            try:
                await self.client.delete(res, str(entry.get("objectName")), namespace=ns if res.namespaced else None)
            except NotFound:
                pass

    def _report(self, stack: Object, graph: Graph, children: dict[str, tuple[Resource, str, Object | None]],
                phases: dict[str, tuple[str, str]]) -> Result:
        spec = stack["spec"]
        entries = []
        for r in spec["resources"]:
            phase, message = phases.get(r["name"], ("Pending", ""))
            res, obj_name, _ = children[r["name"]]
            entry = {"name": r["name"], "apiVersion": res.api_version, "kind": res.kind or r["template"].get("kind"),
                     "objectName": obj_name, "phase": phase}
            if message:
                entry["message"] = message
            entries.append(entry)
        objs = {n: c[2] for n, c in children.items() if c[2] is not None}
        outputs: dict[str, Any] = {}
        for key, expr in (spec.get("outputs") or {}).items():
            try:
                outputs[key] = fill(expr, spec.get("parameters") or {}, objs)
            except KeyError:
                pass
        ready = sum(1 for e in entries if e["phase"] == "Ready")
        status = {"resources": entries, "readyResources": ready, "outputs": outputs}
        failed = [e for e in entries if e["phase"] == "Failed"]
        if failed:
            f = failed[0]
            return Result(status=status, ready=False, reason="ResourceFailed",
                          message=f"{f['name']}: {f.get('message', '')}", requeue_after=RECHECK_SECONDS)
        if ready == len(entries):
            return Result(status=status, ready=True, reason="Converged", message=f"{ready} resources ready")
        return Result(status=status, ready=False, reason="Applying",
                      message=f"{ready}/{len(entries)} resources ready", requeue_after=RECHECK_SECONDS)

    async def finalize(self, obj: Object) -> None:
        """Dependents first: a resource is deleted once nothing that depends on it exists. Each
        resource's phase (Deleting, Waiting, Deleted) goes to status, for ``setpoint destroy``."""
        graph = self._graph(obj)
        ns = obj["metadata"].get("namespace", "default")
        children = await self._children(obj, graph)
        alive = {n for n, c in children.items() if c[2] is not None}
        phases: dict[str, tuple[str, str]] = {}
        for name in graph.order():
            if name not in alive:
                phases[name] = ("Deleted", "")
                continue
            waits = graph.dependents(name) & alive
            if waits:
                phases[name] = ("Waiting", f"for {', '.join(sorted(waits))} to be deleted first")
                continue
            res, obj_name, live = children[name]
            phases[name] = ("Deleting", "")
            if live is not None and not live["metadata"].get("deletionTimestamp"):
                try:
                    await self.client.delete(res, obj_name, namespace=ns if res.namespaced else None)
                except NotFound:
                    phases[name] = ("Deleted", "")
        await self._write_destroy_status(obj, children, phases)
        if not alive:
            return
        # Each deletion is heard through the watches; the retry is the safety net.
        raise NotReady(f"deleting {len(alive)} resources, dependents first", retry_after=RECHECK_SECONDS,
                       reason="Destroying")

    async def _write_destroy_status(self, obj: Object, children: dict[str, tuple[Resource, str, Object | None]],
                                    phases: dict[str, tuple[str, str]]) -> None:
        entries = []
        for r in obj["spec"]["resources"]:
            res, obj_name, _ = children[r["name"]]
            phase, message = phases[r["name"]]
            entry = {"name": r["name"], "apiVersion": res.api_version, "kind": res.kind or r["template"].get("kind"),
                     "objectName": obj_name, "phase": phase}
            if message:
                entry["message"] = message
            entries.append(entry)
        if entries == (obj.get("status") or {}).get("resources"):
            return
        try:
            await self.client.patch(STACKS, obj["metadata"]["name"], {"status": {"resources": entries}},
                                    namespace=obj["metadata"].get("namespace"), subresource="status")
        except (NotFound, APIStatusError) as e:  # gone meanwhile, or raced: the next pass writes it
            log.debug("stack %s: destroy status not written: %s", obj["metadata"].get("name"), e)


__all__ = ["StackController", "converged"]
