"""List and watch semantics: selectors, pagination, resourceVersion, resume, bookmarks, 410."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest_helpers import wpath
from tests.conftest import ensure_crd, widget
from tests.servers import ServerProcess, wait_until


@pytest.fixture
def c(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.sync_client() as client:
        yield client


def names(body: dict[str, Any]) -> list[str]:
    return [i["metadata"]["name"] for i in body["items"]]


class WatchReader:
    """Reads a watch stream line by line with deadlines (no sleeps)."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self._cm = client.stream("GET", url, timeout=httpx.Timeout(30.0, read=20.0))
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()

    def next(self) -> dict[str, Any]:
        for line in self._lines:
            if line.strip():
                return json.loads(line)  # type: ignore[no-any-return]
        raise AssertionError("watch stream ended")

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]

    def rest(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines if line.strip()]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def test_label_and_field_selectors(c: httpx.Client, namespace: str) -> None:
    specs = {"a": {"app": "web", "tier": "front"}, "b": {"app": "web", "tier": "back"},
             "c": {"app": "db"}, "d": {}}
    for n, labels in specs.items():
        assert c.post(wpath(namespace), json=widget(n, labels=labels or None)).status_code == 201
    q = lambda sel: names(c.get(wpath(namespace), params={"labelSelector": sel}).json())  # noqa: E731
    assert q("app=web") == ["a", "b"]
    assert q("app==web,tier!=front") == ["b"]
    assert q("app in (db, web)") == ["a", "b", "c"]
    assert q("app notin (web)") == ["c", "d"]
    assert q("tier") == ["a", "b"]
    assert q("!tier") == ["c", "d"]
    r = c.get(wpath(namespace), params={"fieldSelector": "metadata.name=c"})
    assert names(r.json()) == ["c"]
    r = c.get("/apis/example.com/v1/widgets", params={"fieldSelector": f"metadata.namespace={namespace}"})
    assert names(r.json()) == ["a", "b", "c", "d"]
    r = c.get(wpath(namespace), params={"fieldSelector": "spec.size=1"})
    assert r.status_code == 400 and r.json()["reason"] == "BadRequest"
    r = c.get(wpath(namespace), params={"labelSelector": "app in (web"})
    assert r.status_code == 400


def test_pagination_is_consistent(c: httpx.Client, namespace: str) -> None:
    for i in range(7):
        c.post(wpath(namespace), json=widget(f"p{i}", labels={"odd": str(i % 2)}))
    first = c.get(wpath(namespace), params={"limit": 3}).json()
    assert names(first) == ["p0", "p1", "p2"]
    token = first["metadata"]["continue"]
    rv = first["metadata"]["resourceVersion"]
    # A write between pages does not show up: the list continues at the first page's revision.
    c.post(wpath(namespace), json=widget("p3a"))
    second = c.get(wpath(namespace), params={"limit": 3, "continue": token}).json()
    assert names(second) == ["p3", "p4", "p5"]
    assert second["metadata"]["resourceVersion"] == rv
    third = c.get(wpath(namespace), params={"limit": 3, "continue": second["metadata"]["continue"]}).json()
    assert names(third) == ["p6"] and not third["metadata"].get("continue")
    # Limit with a selector fills pages with matching items only.
    page = c.get(wpath(namespace), params={"limit": 2, "labelSelector": "odd=1"}).json()
    assert names(page) == ["p1", "p3"]
    rest = c.get(wpath(namespace), params={"limit": 2, "labelSelector": "odd=1",
                                           "continue": page["metadata"]["continue"]}).json()
    assert names(rest) == ["p5"]
    assert c.get(wpath(namespace), params={"continue": "garbage!"}).status_code == 400


def test_resource_version_semantics(c: httpx.Client, namespace: str) -> None:
    w = c.post(wpath(namespace), json=widget("rv", size=1)).json()
    rv1 = int(w["metadata"]["resourceVersion"])
    w["spec"]["size"] = 2
    rv2 = int(c.put(wpath(namespace, "rv"), json=w).json()["metadata"]["resourceVersion"])
    # Exact: the list as it was.
    old = c.get(wpath(namespace), params={"resourceVersion": rv1, "resourceVersionMatch": "Exact"}).json()
    assert old["items"][0]["spec"]["size"] == 1 and old["metadata"]["resourceVersion"] == str(rv1)
    # Not older than: served from the cache once it has caught up.
    new = c.get(wpath(namespace), params={"resourceVersion": rv2}).json()
    assert new["items"][0]["spec"]["size"] == 2
    assert int(new["metadata"]["resourceVersion"]) >= rv2
    assert c.get(wpath(namespace), params={"resourceVersion": "0"}).json()["items"][0]["spec"]["size"] == 2
    # A get at an old revision.
    assert c.get(wpath(namespace, "rv"), params={"resourceVersion": rv1}).json()["spec"]["size"] == 1
    r = c.get(wpath(namespace), params={"resourceVersion": "abc"})
    assert r.status_code == 400
    r = c.get(wpath(namespace), params={"resourceVersionMatch": "Exact"})
    assert r.status_code == 400
    r = c.get(wpath(namespace), params={"resourceVersion": rv2 + 1_000_000})
    assert r.status_code == 504


def test_watch_events_and_resume(c: httpx.Client, namespace: str) -> None:
    base = c.get(wpath(namespace)).json()["metadata"]["resourceVersion"]
    watch = WatchReader(c, wpath(namespace) + f"?watch=1&resourceVersion={base}")
    try:
        w = c.post(wpath(namespace), json=widget("x")).json()
        w["spec"]["size"] = 3
        c.put(wpath(namespace, "x"), json=w)
        c.delete(wpath(namespace, "x"))
        evs = watch.take(3)
    finally:
        watch.close()
    assert [e["type"] for e in evs] == ["ADDED", "MODIFIED", "DELETED"]
    revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
    assert revs == sorted(revs) and len(set(revs)) == 3
    assert evs[1]["object"]["spec"]["size"] == 3
    # Resume after the first event: exactly the rest, no duplicates.
    resumed = WatchReader(c, wpath(namespace) + f"?watch=1&resourceVersion={revs[0]}")
    try:
        again = resumed.take(2)
    finally:
        resumed.close()
    assert [e["type"] for e in again] == ["MODIFIED", "DELETED"]
    assert [int(e["object"]["metadata"]["resourceVersion"]) for e in again] == revs[1:]


def test_watch_without_resource_version_starts_with_current_state(c: httpx.Client, namespace: str) -> None:
    c.post(wpath(namespace), json=widget("pre1"))
    c.post(wpath(namespace), json=widget("pre2"))
    watch = WatchReader(c, wpath(namespace) + "?watch=true")
    try:
        initial = watch.take(2)
        c.post(wpath(namespace), json=widget("post"))
        after = watch.next()
    finally:
        watch.close()
    assert {e["type"] for e in initial} == {"ADDED"}
    assert sorted(e["object"]["metadata"]["name"] for e in initial) == ["pre1", "pre2"]
    assert after["type"] == "ADDED" and after["object"]["metadata"]["name"] == "post"


def test_watch_with_label_selector_sees_transitions(c: httpx.Client, namespace: str) -> None:
    rv = c.get(wpath(namespace)).json()["metadata"]["resourceVersion"]
    watch = WatchReader(c, wpath(namespace) + f"?watch=1&resourceVersion={rv}&labelSelector=on%3Dyes")
    try:
        c.post(wpath(namespace), json=widget("other", labels={"on": "no"}))
        w = c.post(wpath(namespace), json=widget("sel", labels={"on": "no"})).json()
        w["metadata"]["labels"]["on"] = "yes"
        w = c.put(wpath(namespace, "sel"), json=w).json()
        w["metadata"]["labels"]["on"] = "no"
        c.put(wpath(namespace, "sel"), json=w)
        evs = watch.take(2)
    finally:
        watch.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "sel"), ("DELETED", "sel")]


def test_watch_timeout_and_bookmarks(c: httpx.Client, namespace: str) -> None:
    rv = c.get(wpath(namespace)).json()["metadata"]["resourceVersion"]
    started = time.monotonic()
    watch = WatchReader(c, wpath(namespace) +
                        f"?watch=1&resourceVersion={rv}&timeoutSeconds=2&allowWatchBookmarks=true")
    try:
        # A write elsewhere advances the revision; the idle watcher learns it through a bookmark.
        c.post("/api/v1/namespaces", json={"metadata": {"name": f"{namespace}-bm"}})
        evs = watch.rest()
    finally:
        watch.close()
    assert time.monotonic() - started < 15  # the server ended the stream on timeoutSeconds
    assert evs and all(e["type"] == "BOOKMARK" for e in evs)
    assert int(evs[-1]["object"]["metadata"]["resourceVersion"]) > int(rv)
    assert evs[-1]["object"]["kind"] == "Widget"


def test_watch_single_object_by_name(c: httpx.Client, namespace: str) -> None:
    rv = c.get(wpath(namespace)).json()["metadata"]["resourceVersion"]
    watch = WatchReader(c, wpath(namespace, "one") + f"?watch=1&resourceVersion={rv}")
    try:
        c.post(wpath(namespace), json=widget("one-not"))
        c.post(wpath(namespace), json=widget("one"))
        ev = watch.next()
    finally:
        watch.close()
    assert ev["object"]["metadata"]["name"] == "one"


def test_watch_and_list_from_compacted_revision_get_410(data_dir: Path) -> None:
    srv = ServerProcess(data_dir, ["--history-revisions", "5", "--history-seconds", "0",
                                   "--compact-interval", "0.2", "--watch-cache-window", "2"]).start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            first = c.post(wpath("default"), json=widget("a")).json()
            old_rv = int(first["metadata"]["resourceVersion"])
            for i in range(20):
                c.post(wpath("default"), json=widget(f"n{i}"))

            def compacted() -> bool:
                r = c.get(wpath("default"), params={"resourceVersion": old_rv,
                                                    "resourceVersionMatch": "Exact"})
                return r.status_code == 410

            wait_until(compacted, timeout=15, what="compaction")
            r = c.get(wpath("default") + f"?watch=1&resourceVersion={old_rv}")
            assert r.status_code == 410
            assert r.json()["reason"] == "Expired" and r.json()["kind"] == "Status"
            # A recent revision outside the (tiny) in-memory window is still served, from the store.
            recent = int(c.get(wpath("default")).json()["metadata"]["resourceVersion"]) - 3
            watch = WatchReader(c, wpath("default") + f"?watch=1&resourceVersion={recent}")
            try:
                c.post(wpath("default"), json=widget("late"))
                seen = [watch.next() for _ in range(4)]
            finally:
                watch.close()
            revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in seen]
            assert revs == list(range(recent + 1, recent + 5))
            assert seen[-1]["object"]["metadata"]["name"] == "late"
    finally:
        srv.stop()


def test_bookmarks_are_a_heartbeat_on_a_quiet_stream(server: ServerProcess) -> None:
    # A namespace nobody writes to: the bookmarks still come, carrying a revision no older than
    # the one the watch started from.
    with server.sync_client() as c:
        ns = f"quiet-{int(time.monotonic() * 1000)}"
        c.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
        rv = c.get(f"/api/v1/namespaces/{ns}/events").json()["metadata"]["resourceVersion"]
        watch = WatchReader(c, f"/api/v1/namespaces/{ns}/events?watch=1&resourceVersion={rv}"
                               "&allowWatchBookmarks=true&timeoutSeconds=7")
        try:
            first = watch.next()
        finally:
            watch.close()
    assert first["type"] == "BOOKMARK"
    assert int(first["object"]["metadata"]["resourceVersion"]) >= int(rv)
