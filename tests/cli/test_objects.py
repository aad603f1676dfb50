"""``setpoint apply / get / delete / watch`` as users run them: the real command in a subprocess
against a real server. No mocks; synchronisation through the server's watch and the command's
own output, never sleeps."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ensure_crd, widget
from tests.servers import ServerProcess, wait_until

ENV = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"COLUMNS": "200", "NO_COLOR": "1"}


def kubeconfig(server: ServerProcess) -> str:
    return str(server.data_dir / "kubeconfig.yaml")


def setpoint(server: ServerProcess, *args: str, stdin: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "setpoint", *args, "--kubeconfig", kubeconfig(server)],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=ENV)


class Running:
    """A ``setpoint`` command left running; its stdout read line by line with deadlines."""

    def __init__(self, server: ServerProcess, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", *args, "--kubeconfig", kubeconfig(server)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=ENV)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """The next stdout line matching ``pattern`` (regex), within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                line = ""
                remaining = 0
            if line is None:
                raise AssertionError(f"exited (rc={self.proc.wait()}) before {pattern!r}; stdout so far: "
                                     f"{self.seen}; stderr: {self.stderr()}")
            if line:
                self.seen.append(line)
                if re.search(pattern, line):
                    return line
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; stdout: {self.seen}")

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "<still running>"
        return self.proc.stderr.read()

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Wait for exit: the return code, the rest of stdout, and stderr."""
        rc = self.proc.wait(timeout=timeout)
        rest: list[str] = []
        while (line := self.lines.get(timeout=5)) is not None:
            rest.append(line)
        out = "\n".join([*self.seen, *rest])
        return rc, out, self.stderr()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def running(server: ServerProcess) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, srv: ServerProcess = server) -> Running:
        r = Running(srv, *args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def watch_until(server: ServerProcess, path: str, name: str, predicate: Callable[[dict[str, Any]], bool],
                timeout: float = 20.0) -> dict[str, Any]:
    """Watch one object on the server (from its current state) until ``predicate(event)`` holds."""
    deadline = time.monotonic() + timeout
    with server.sync_client() as c, c.stream(
            "GET", path, params={"watch": "1", "fieldSelector": f"metadata.name={name}",
                                 "timeoutSeconds": str(int(timeout) + 1)},
            timeout=httpx.Timeout(30.0, read=timeout + 5)) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.strip():
                event = json.loads(line)
                if predicate(event):
                    return event  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"{path} {name}: no matching event within {timeout}s")


def compacted(c: httpx.Client, path: str, rv: str) -> bool:
    """Whether a watch from ``rv`` is refused as expired (410), as an HTTP status or an ERROR event."""
    with c.stream("GET", path, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "1"}) as r:
        if r.status_code == 410:
            return True
        for line in r.iter_lines():
            if line.strip():
                event = json.loads(line)
                return bool(event["type"] == "ERROR" and event["object"].get("code") == 410)
    return False


def widgets_path(namespace: str) -> str:
    return f"/apis/example.com/v1/namespaces/{namespace}/widgets"


def dump(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


# ---- a CRD, a namespace and objects in one file ------------------------------------------------------

@dataclass
class Kit:
    group: str
    short: str
    namespace: str
    plural: str = "gizmos"

    def crd(self) -> dict[str, Any]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{self.plural}.{self.group}"},
            "spec": {
                "group": self.group, "scope": "Namespaced",
                "names": {"plural": self.plural, "singular": "gizmo", "kind": "Gizmo", "shortNames": [self.short]},
                "versions": [{
                    "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {"name": "Ready", "type": "string",
                         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                        {"name": "First-Tag", "type": "string", "jsonPath": ".spec.tags[0]", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 0},
                            "tags": {"type": "array", "items": {"type": "string"}}}},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    }}},
                }],
            },
        }

    def gizmo(self, name: str, size: int, **extra: Any) -> dict[str, Any]:
        return {"apiVersion": f"{self.group}/v1", "kind": "Gizmo",
                "metadata": {"name": name, "namespace": self.namespace, **extra}, "spec": {"size": size}}

    def manifest(self, g2_size: int = 2) -> str:
        g1 = self.gizmo("g1", 1, labels={"tier": "front"})
        g1["spec"]["tags"] = ["red", "round"]
        # Objects before their namespace and CRD: apply orders them itself.
        return dump(g1, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}},
                    self.gizmo("g2", g2_size), self.crd())


@pytest.fixture(scope="module")
def kit() -> Kit:
    suffix = uuid.uuid4().hex[:8]
    return Kit(group=f"g{suffix}.example.com", short=f"gz{suffix[:5]}", namespace=f"cli-{suffix}")


def applied(server: ServerProcess, kit: Kit, tmp_path: Path) -> None:
    path = tmp_path / "kit.yaml"
    path.write_text(kit.manifest())
    r = setpoint(server, "apply", "-f", str(path))
    assert r.returncode == 0, r.stderr


def results(stdout: str) -> dict[str, str]:
    """``kind/name -> created|configured|unchanged`` from apply's output."""
    out = {}
    for line in stdout.splitlines():
        ref, _, result = line.rpartition(" ")
        out[ref] = result
    return out


def test_apply_creates_then_unchanged_then_configured(server: ServerProcess, kit: Kit, tmp_path: Path) -> None:
    path = tmp_path / "kit.yaml"
    path.write_text(kit.manifest())
    crd_ref = f"customresourcedefinition.apiextensions.k8s.io/gizmos.{kit.group}"
    g1, g2 = f"gizmo.{kit.group}/g1", f"gizmo.{kit.group}/g2"

    r = setpoint(server, "apply", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{crd_ref} created", f"namespace/{kit.namespace} created",
                                     f"{g1} created", f"{g2} created"]

    r = setpoint(server, "apply", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert set(results(r.stdout).values()) == {"unchanged"}

    path.write_text(kit.manifest(g2_size=5))
    r = setpoint(server, "apply", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert results(r.stdout) == {crd_ref: "unchanged", f"namespace/{kit.namespace}": "unchanged",
                                 g1: "unchanged", g2: "configured"}
    with server.sync_client() as c:
        got = c.get(f"/apis/{kit.group}/v1/namespaces/{kit.namespace}/gizmos/g2").json()
    assert got["spec"]["size"] == 5


def test_apply_invalid_object_fails_and_the_others_are_applied(server: ServerProcess, namespace: str,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "objs.yaml"
    path.write_text(dump(widget("ok-a"), widget("broken", size=-1), widget("ok-b")))
    r = setpoint(server, "apply", "-f", str(path), "-n", namespace)
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["widget.example.com/ok-a created", "widget.example.com/ok-b created"]
    assert "widget.example.com/broken" in r.stderr and "spec.size" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = setpoint(server, "get", "widgets", "-n", namespace, "-o", "name")
    assert r.stdout.split() == ["widget.example.com/ok-a", "widget.example.com/ok-b"]


def test_apply_directory_and_stdin(server: ServerProcess, namespace: str, tmp_path: Path) -> None:
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "b.json").write_text(json.dumps(widget("from-json")))
    (d / "a.yaml").write_text(dump(widget("from-yaml")))
    (d / "notes.txt").write_text("not a manifest")
    r = setpoint(server, "apply", "-f", str(d), "-n", namespace)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["widget.example.com/from-yaml created", "widget.example.com/from-json created"]
    r = setpoint(server, "apply", "-f", "-", "-n", namespace, stdin=json.dumps(widget("from-stdin")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "widget.example.com/from-stdin created"


def test_get_in_every_output_format(server: ServerProcess, kit: Kit, tmp_path: Path) -> None:
    applied(server, kit, tmp_path)
    ns = ["-n", kit.namespace]

    r = setpoint(server, "get", "gizmos", *ns)
    assert r.returncode == 0, r.stderr
    header, *rows = [line.split() for line in r.stdout.splitlines()]
    assert header == ["NAME", "SIZE", "READY", "AGE"]
    assert [row[:3] for row in rows] == [["g1", "1", "<none>"], ["g2", "2", "<none>"]]

    r = setpoint(server, "get", "gizmo", *ns, "-o", "wide")
    header, *rows = [line.split() for line in r.stdout.splitlines()]
    assert header == ["NAME", "SIZE", "READY", "FIRST-TAG", "AGE"]
    assert rows[0][:4] == ["g1", "1", "<none>", "red"]

    r = setpoint(server, "get", "Gizmo", *ns, "-o", "yaml")
    doc = yaml.safe_load(r.stdout)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["g1", "g2"]
    assert doc["items"][0]["apiVersion"] == f"{kit.group}/v1" and doc["items"][0]["kind"] == "Gizmo"

    r = setpoint(server, "get", f"gizmos.{kit.group}", "g2", *ns, "-o", "json")
    obj = json.loads(r.stdout)
    assert obj["kind"] == "Gizmo" and obj["metadata"]["name"] == "g2" and obj["spec"] == {"size": 2}

    r = setpoint(server, "get", kit.short, *ns, "-o", "name")
    assert r.stdout.split() == [f"gizmo.{kit.group}/g1", f"gizmo.{kit.group}/g2"]
    r = setpoint(server, "get", f"{kit.short}/g1", *ns, "-o", "name")
    assert r.stdout.split() == [f"gizmo.{kit.group}/g1"]

    r = setpoint(server, "get", kit.short, *ns, "-l", "tier=front", "-o", "name")
    assert r.stdout.split() == [f"gizmo.{kit.group}/g1"]
    r = setpoint(server, "get", kit.short, *ns, "--field-selector", "metadata.name=g2", "-o", "name")
    assert r.stdout.split() == [f"gizmo.{kit.group}/g2"]

    r = setpoint(server, "get", kit.short, "-A")
    header, *rows = [line.split() for line in r.stdout.splitlines()]
    assert header[:2] == ["NAMESPACE", "NAME"] and rows[0][:2] == [kit.namespace, "g1"]

    # Printer columns follow the object: a Ready condition shows up in its column.
    with server.sync_client() as c:
        p = c.patch(f"/apis/{kit.group}/v1/namespaces/{kit.namespace}/gizmos/g1/status",
                    json={"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                    headers={"Content-Type": "application/merge-patch+json"})
        assert p.status_code == 200, p.text
    r = setpoint(server, "get", kit.short, "g1", *ns)
    assert r.stdout.splitlines()[1].split()[:3] == ["g1", "1", "True"]

    r = setpoint(server, "get", "ns", kit.namespace)
    assert r.stdout.splitlines()[1].split()[:2] == [kit.namespace, "Active"]

    r = setpoint(server, "get", kit.short, "nope", *ns)
    assert r.returncode == 1 and '"nope" not found' in r.stderr
    r = setpoint(server, "get", "doohickeys")
    assert r.returncode == 1 and 'resource type "doohickeys"' in r.stderr
    assert "Traceback" not in r.stderr


def test_delete_waits_for_a_finalizer(server: ServerProcess, namespace: str,
                                      running: Callable[..., Running]) -> None:
    with server.sync_client() as c:
        w = widget("held")
        w["metadata"]["finalizers"] = ["example.com/hold"]
        assert c.post(widgets_path(namespace), json=w).status_code == 201
        deleting = running("delete", "widget", "held", "-n", namespace, "--wait", "--timeout", "30",
                           "--cascade", "foreground")
        watch_until(server, widgets_path(namespace), "held",
                    lambda e: bool(e["object"]["metadata"].get("deletionTimestamp")))
        assert deleting.proc.poll() is None, deleting.finish()
        r = c.patch(f"{widgets_path(namespace)}/held", json={"metadata": {"finalizers": None}},
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
        rc, out, err = deleting.finish()
        assert rc == 0, err
        assert "widget.example.com/held deleted" in out.splitlines()
        assert c.get(f"{widgets_path(namespace)}/held").status_code == 404


def test_delete_from_file_missing_objects_and_no_wait(server: ServerProcess, namespace: str,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(dump(widget("d1"), widget("d2")))
    assert setpoint(server, "apply", "-f", str(path), "-n", namespace).returncode == 0
    r = setpoint(server, "delete", "-f", str(path), "-n", namespace, "--no-wait")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["widget.example.com/d1 deleted", "widget.example.com/d2 deleted"]
    r = setpoint(server, "delete", "wd", "d1", "-n", namespace)
    assert r.returncode == 1 and '"d1" not found' in r.stderr
    assert setpoint(server, "delete", "wd", "d1", "-n", namespace, "--ignore-not-found").returncode == 0


def test_watch_prints_added_modified_deleted(server: ServerProcess, namespace: str,
                                             running: Callable[..., Running]) -> None:
    lines = running("watch", "widgets", "-n", namespace)
    as_json = running("watch", "widget", "w", "-n", namespace, "-o", "json")
    path = widgets_path(namespace)
    events: list[dict[str, Any]] = []
    # Each step waits until both watchers have printed the last one: a watcher that lists late
    # would otherwise report an object's newest state as ADDED and never see the change.
    with server.sync_client() as c:
        created = c.post(path, json=widget("w"))
        assert created.status_code == 201
        rv = created.json()["metadata"]["resourceVersion"]
        assert lines.expect(r"^ADDED ") == f"ADDED widget.example.com/w rv={rv}"
        events.append(json.loads(as_json.expect('"type":"ADDED"')))
        modified = c.patch(f"{path}/w", json={"spec": {"size": 7}},
                           headers={"Content-Type": "application/merge-patch+json"})
        rv = modified.json()["metadata"]["resourceVersion"]
        assert lines.expect(r"^MODIFIED ") == f"MODIFIED widget.example.com/w rv={rv}"
        events.append(json.loads(as_json.expect('"type":"MODIFIED"')))
        assert c.delete(f"{path}/w").status_code == 200
        assert lines.expect(r"^DELETED ").startswith("DELETED widget.example.com/w rv=")
        events.append(json.loads(as_json.expect('"type":"DELETED"')))
    assert events[1]["object"]["spec"]["size"] == 7
    assert all(e["object"]["metadata"]["name"] == "w" for e in events)


def test_watch_resumes_after_the_server_restarts(tmp_path: Path, running: Callable[..., Running]) -> None:
    srv = ServerProcess(tmp_path / "srv").start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            path = widgets_path("default")
            watching = running("watch", "widgets", "-n", "default", srv=srv)
            assert c.post(path, json=widget("before")).status_code == 201
            watching.expect(r"^ADDED widget.example.com/before ")
        srv.restart()
        with srv.sync_client() as c:
            assert c.post(path, json=widget("after")).status_code == 201
        watching.expect(r"^ADDED widget.example.com/after ", timeout=30)
        assert not any("before" in line for line in watching.seen[1:]), watching.seen  # not repeated
    finally:
        srv.stop()


def test_watch_lists_again_when_its_revision_is_compacted(tmp_path: Path,
                                                          running: Callable[..., Running]) -> None:
    """A watcher away longer than the history gets 410 on resuming: it lists again and prints
    what changed meanwhile."""
    srv = ServerProcess(tmp_path / "srv", args=["--history-revisions", "1", "--compact-interval", "0.1",
                                                "--watch-cache-window", "1"]).start()
    path = widgets_path("default")
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            for name in ("stays", "changes", "goes"):
                assert c.post(path, json=widget(name)).status_code == 201
            watching = running("watch", "widgets", "-n", "default", srv=srv)
            for _ in range(3):
                watching.expect(r"^ADDED ")
            watching.proc.send_signal(signal.SIGSTOP)  # away: it cannot reconnect before compaction
            try:
                srv.restart()
                with srv.sync_client() as c2:
                    old_rv = c2.get(f"{path}/goes").json()["metadata"]["resourceVersion"]
                    assert c2.patch(f"{path}/changes", json={"spec": {"size": 9}},
                                    headers={"Content-Type": "application/merge-patch+json"}).status_code == 200
                    assert c2.delete(f"{path}/goes").status_code == 200
                    assert c2.post(path, json=widget("new")).status_code == 201
                    wait_until(lambda: compacted(c2, path, old_rv), timeout=20,
                               what="history compacted past the watcher's revision")
            finally:
                watching.proc.send_signal(signal.SIGCONT)
        lines = [watching.expect(r"^(ADDED|MODIFIED|DELETED) ", timeout=30) for _ in range(3)]
        assert sorted(" ".join(line.split()[:2]) for line in lines) == [
            "ADDED widget.example.com/new", "DELETED widget.example.com/goes",
            "MODIFIED widget.example.com/changes"]
        watching.stop()
        assert "listing again" in watching.stderr()
    finally:
        srv.stop()


def test_apply_wait_times_out_on_an_object_that_never_converges(server: ServerProcess, namespace: str,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(dump(widget("stuck")))
    started = time.monotonic()
    r = setpoint(server, "apply", "-f", str(path), "-n", namespace, "--wait", "--timeout", "1.5")
    assert r.returncode == 1
    assert time.monotonic() - started >= 1.5
    assert "widget.example.com/stuck created" in r.stdout
    assert "timed out" in r.stderr and "widget.example.com/stuck" in r.stderr, r.stderr


def test_apply_wait_succeeds_once_the_object_converges(server: ServerProcess, namespace: str, tmp_path: Path,
                                                        running: Callable[..., Running]) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(dump(widget("comes-up")))
    applying = running("apply", "-f", str(path), "-n", namespace, "--wait", "--timeout", "30")
    event = watch_until(server, widgets_path(namespace), "comes-up", lambda e: e["type"] == "ADDED")
    generation = event["object"]["metadata"]["generation"]
    with server.sync_client() as c:
        r = c.patch(f"{widgets_path(namespace)}/comes-up/status", headers={
            "Content-Type": "application/merge-patch+json"}, json={"status": {
                "observedGeneration": generation,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": ""}]}})
        assert r.status_code == 200, r.text
    rc, out, err = applying.finish()
    assert rc == 0, (out, err)
    assert "widget.example.com/comes-up created" in out
    assert re.search(r"widget.example.com/comes-up .*converged", out), out


def test_usage_and_connection_errors(server: ServerProcess, tmp_path: Path) -> None:
    r = setpoint(server, "get", "widgets", "-o", "xml")
    assert r.returncode == 2
    r = setpoint(server, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "broken.yaml").write_text("a: [")
    assert setpoint(server, "apply", "-f", str(tmp_path / "broken.yaml")).returncode == 2
    assert setpoint(server, "delete", "widgets").returncode == 2

    dead = tmp_path / "dead-kubeconfig.yaml"
    config = yaml.safe_load((server.data_dir / "kubeconfig.yaml").read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard port: nothing listens
    dead.write_text(yaml.safe_dump(config))
    r = subprocess.run([sys.executable, "-m", "setpoint", "get", "widgets", "--kubeconfig", str(dead)],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_yaml_only_keys_are_read_as_kubectl_reads_them() -> None:
    from setpoint.cli.objects.manifests import _parse

    (m,) = _parse("apiVersion: v1\nkind: X\nmetadata: {name: a}\nspec:\n  on: 3\n  day: 2026-01-01\n", "s",
                  json_only=False)
    assert m.obj["spec"] == {"true": 3, "day": "2026-01-01"}
