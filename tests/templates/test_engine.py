"""The template engine against a real server, with real files and real commands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.client import Client
from setpoint.templates import Engine, TemplateConfig
from setpoint.templates.resolve import CONFIGMAPS
from tests.agent.support import eventually
from tests.servers import ServerProcess

LIST = """{% for cm in objects("configmaps", {"app": "web"}) -%}
{{ cm.metadata.name }}={{ cm.data.value }}
{% endfor -%}
"""


def cm(name: str, value: str, app: str = "web", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": app}, **meta}, "data": {"value": value}}


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with Client(server.client_config()) as c:
        yield c


@pytest.fixture
async def engine(client: Client) -> AsyncIterator[Engine]:
    e = Engine(client)
    yield e
    await e.close()


def config(tmp_path: Path, namespace: str, source: str = LIST, **kw: Any) -> TemplateConfig:
    return TemplateConfig(name="web.j2", source=source, destination=tmp_path / "out", namespace=namespace, **kw)


async def test_renders_on_create_update_and_delete_of_what_it_read(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    await client.create(CONFIGMAPS, cm("other", "x", app="db"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace))
    await eventually(lambda: out.exists() and out.read_text() == "a=1\n", what="the first render")
    await client.create(CONFIGMAPS, cm("b", "2"), namespace=namespace)
    await eventually(lambda: out.read_text() == "a=1\nb=2\n", what="b added")
    await client.patch(CONFIGMAPS, "a", {"data": {"value": "3"}}, namespace=namespace)
    await eventually(lambda: out.read_text() == "a=3\nb=2\n", what="a changed")
    await client.delete(CONFIGMAPS, "b", namespace=namespace)
    await eventually(lambda: out.read_text() == "a=3\n", what="b deleted")
    renders = entry.outcome.renders
    await client.patch(CONFIGMAPS, "other", {"data": {"value": "y"}}, namespace=namespace)  # not read
    await client.patch(CONFIGMAPS, "a", {"data": {"value": "4"}}, namespace=namespace)
    await eventually(lambda: out.read_text() == "a=4\n", what="a changed again")
    assert entry.outcome.renders == renders + 1, "a change to an object it did not read rendered it"
    assert entry.outcome.ok and entry.outcome.digest


async def test_a_burst_is_one_render_and_one_command(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "ran"
    for i in range(10):
        await client.create(CONFIGMAPS, cm(f"c{i}", "0"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, command=f"echo run >> {log}", wait_min=0.5, wait_max=30))
    await entry.first_done.wait()
    assert entry.outcome.renders == 1 and log.read_text().count("run") == 1
    # 1,000 changes, each within the quiet period of the one before.
    for round_ in range(1, 101):
        await asyncio.gather(*(client.patch(CONFIGMAPS, f"c{i}", {"data": {"value": str(round_)}}, namespace=namespace)
                               for i in range(10)))
    await eventually(lambda: out.read_text().count("=100\n") == 10, timeout=20, what="the final state")
    # The file is written before its command runs: wait for the command too.
    await eventually(lambda: log.read_text().count("run") >= 2, timeout=20, what="the command after the burst")
    assert entry.outcome.renders == 2, f"{entry.outcome.renders - 1} renders for one burst"
    assert log.read_text().count("run") == 2 and entry.outcome.commands == 2


async def test_wait_max_bounds_the_delay_under_continuous_change(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    await client.create(CONFIGMAPS, cm("a", "0"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, wait_min=0.5, wait_max=0.8))
    await entry.first_done.wait()
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0
    i = 0
    while loop.time() < end:  # a change every 50 ms: never quiet for 0.5 s
        i += 1
        await client.patch(CONFIGMAPS, "a", {"data": {"value": str(i)}}, namespace=namespace)
        await asyncio.sleep(0.05)  # the pace of the changes, not a wait for something
    renders_during = entry.outcome.renders - 1
    assert 2 <= renders_during <= 5, f"{renders_during} renders in 3 s with wait 0.5s:0.8s"


async def test_an_unchanged_output_is_not_rewritten_and_its_command_not_run(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "ran"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, command=f"echo run >> {log}"))
    await entry.first_done.wait()
    before = out.stat()
    renders = entry.outcome.renders
    await client.patch(CONFIGMAPS, "a", {"metadata": {"annotations": {"note": "read, but not rendered"}}},
                       namespace=namespace)
    await eventually(lambda: entry.outcome.renders == renders + 1, what="a render")
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert entry.outcome.writes == 1 and log.read_text().count("run") == 1


async def test_a_reader_never_sees_a_partial_file(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = "{% set v = configmap('a').value %}begin {{ v }}\n{{ 'x' * 200000 }}\nend {{ v }}\n"
    await client.create(CONFIGMAPS, cm("a", "0"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, source=big))
    await entry.first_done.wait()
    bad: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            text = out.read_text()
            first, last = text.split("\n", 1)[0], text.rstrip("\n").rsplit("\n", 1)[-1]
            if first.removeprefix("begin ") != last.removeprefix("end ") or len(text) < 200000:
                bad.append(f"{first!r} ... {last!r} ({len(text)} bytes)")
            seen.add(first)

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(1, 41):
            await client.patch(CONFIGMAPS, "a", {"data": {"value": str(i)}}, namespace=namespace)
            await eventually(lambda i=i: entry.outcome.writes >= 1 and f"begin {i}\n" in out.read_text()[:20],
                             what=f"version {i}")
    finally:
        stop.set()
        t.join()
    assert not bad, bad[:3]
    assert len(seen) > 10


async def test_a_broken_template_keeps_the_file_and_names_the_line(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    (tmp_path / "g").mkdir()
    engine.put("good", config(tmp_path / "g", namespace))
    entry = engine.put("t", config(tmp_path, namespace))
    await entry.first_done.wait()
    assert out.read_text() == "a=1\n"
    engine.put("t", config(tmp_path, namespace, source="ok\n{% for x in %}\n"))
    await eventually(lambda: engine.entries["t"].outcome.reason == "RenderFailed", what="RenderFailed")
    assert "template web.j2 line 2" in engine.entries["t"].outcome.message
    engine.put("t", config(tmp_path, namespace, source="a\nb\n{{ configmap('a').missing }}\n"))
    await eventually(lambda: "line 3" in engine.entries["t"].outcome.message, what="the undefined key's line")
    assert "missing" in engine.entries["t"].outcome.message
    assert out.read_text() == "a=1\n", "a failed render changed the file"
    await client.patch(CONFIGMAPS, "a", {"data": {"value": "2"}}, namespace=namespace)
    await eventually(lambda: (tmp_path / "g" / "out").read_text() == "a=2\n", what="the other template")


async def test_a_failing_command_is_retried_and_reported(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, command=f"echo trying; test -e {flag}"))
    await eventually(lambda: entry.outcome.reason == "CommandFailed", what="CommandFailed")
    assert entry.outcome.command_exit == 1 and "trying" in entry.outcome.command_output
    await eventually(lambda: entry.outcome.commands >= 2, timeout=10, what="a retry")
    flag.touch()
    await eventually(lambda: entry.outcome.ok, timeout=15, what="success after the fix")
    assert entry.outcome.command_exit == 0


async def test_a_command_that_times_out_is_killed_with_its_process_group(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    marker = f"setpoint-test-{os.getpid()}-{tmp_path.name}"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    command = f"sh -c 'sleep 30' {marker} & sh -c 'sleep 31' {marker}; true"
    entry = engine.put("t", config(tmp_path, namespace, command=command, command_timeout=0.5))
    await eventually(lambda: entry.outcome.reason == "CommandFailed", what="the timeout")
    assert "timed out" in entry.outcome.message and entry.outcome.command_exit is None

    def sleepers() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    await eventually(lambda: not sleepers(), what="no process of the command left")


async def test_a_template_raising_anything_is_reported_and_rendering_goes_on(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    """Not only Jinja's errors: a filter raising what nobody expected (yaml cannot represent a
    range) or a recursive macro (RecursionError) fails that render, and that render only."""
    out = tmp_path / "out"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    (tmp_path / "g").mkdir()
    good = engine.put("good", config(tmp_path / "g", namespace))
    source = ("value {{ configmap('a').value }}\n"
              "{% if configmap('a').value == 'yaml' %}{{ range(3) | toyaml }}{% endif %}\n"
              "{% macro deeper(n) %}{{ deeper(n + 1) }}{% endmacro %}\n"
              "{% if configmap('a').value == 'recurse' %}{{ deeper(0) }}{% endif %}\n")
    entry = engine.put("t", config(tmp_path, namespace, source=source))
    await entry.first_done.wait()
    assert entry.outcome.ok and out.read_text() == "value 1\n\n\n\n"
    await good.first_done.wait()

    await client.patch(CONFIGMAPS, "a", {"data": {"value": "yaml"}}, namespace=namespace)
    await eventually(lambda: entry.outcome.reason == "RenderFailed", what="the RepresenterError reported")
    assert "template web.j2 line 2: RepresenterError" in entry.outcome.message, entry.outcome.message
    assert out.read_text() == "value 1\n\n\n\n", "a failed render changed the file"
    await eventually(lambda: (tmp_path / "g" / "out").read_text() == "a=yaml\n", what="the other template")

    await client.patch(CONFIGMAPS, "a", {"data": {"value": "recurse"}}, namespace=namespace)
    await eventually(lambda: "RecursionError" in entry.outcome.message, what="the RecursionError reported")
    assert "template web.j2 line 3" in entry.outcome.message and not entry.outcome.ok
    assert out.read_text() == "value 1\n\n\n\n"

    await client.patch(CONFIGMAPS, "a", {"data": {"value": "2"}}, namespace=namespace)
    await eventually(lambda: out.read_text() == "value 2\n\n\n\n", what="the fixed state rendered")
    assert entry.outcome.ok and not entry.task.done()  # type: ignore[union-attr]
    assert (tmp_path / "g" / "out").read_text() == "a=2\n"


FUNCTIONS = """\
{%- set a = get("configmaps", "a") -%}
get: {{ a.metadata.name }} {{ a.data.value }} {{ get("cm", "no-such-map") is none }}
{%- set web = objects("configmaps", {"app": "web"}) %}
sorted: {{ web | sort(attribute="data.value") | map(attribute="metadata.name") | join(",") }}
{% for tier, items in web | groupby("metadata.labels.tier") -%}
{{ tier }}: {{ items | map(attribute="metadata.name") | join(",") }}
{% endfor -%}
{{ {"name": a.metadata.name, "data": a.data, "list": [2, 1]} | toyaml -}}
"""


async def test_get_sort_groupby_and_toyaml_over_objects(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name, value, tier in [("a", "3", "front"), ("b", "1", "back"), ("c", "2", "front")]:
        obj = cm(name, value)
        obj["metadata"]["labels"]["tier"] = tier
        await client.create(CONFIGMAPS, obj, namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, source=FUNCTIONS))
    await entry.first_done.wait()
    assert entry.outcome.ok, entry.outcome.message
    assert out.read_text() == ("get: a 3 True\n"
                               "sorted: b,c,a\n"
                               "back: b\n"
                               "front: a,c\n"
                               "data:\n  value: '3'\n"
                               "list:\n- 2\n- 1\n"
                               "name: a\n")
    # get() of an object that does not exist yet is watched: creating it renders again.
    entry = engine.put("t", config(tmp_path, namespace, source="{{ get('configmaps', 'late') is none }}\n"))
    await eventually(lambda: out.read_text() == "True\n", what="get() of a missing object")
    await client.create(CONFIGMAPS, cm("late", "x"), namespace=namespace)
    await eventually(lambda: out.read_text() == "False\n", what="get() after the object was created")


async def test_a_recorded_command_runs_again_unless_it_succeeded_for_the_content(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    """What a restarted agent sees: the file already holds the rendered content. The command runs
    when the record says it never succeeded for that content, or its last run failed; not when it
    succeeded for it; and, with no record at all (the CLI), only after a write."""
    out, log = tmp_path / "out", tmp_path / "ran"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    out.write_text("a=1\n")
    out.chmod(0o644)
    digest = hashlib.sha256(b"a=1\n").hexdigest()
    command = f"echo run >> {log}"
    cases = [({}, 0), ({"command_succeeded": digest}, 0), ({"command_succeeded": "0" * 64}, 1),
             ({"command_succeeded": ""}, 1), ({"command_succeeded": digest, "command_failed": True}, 1)]
    for i, (record, runs) in enumerate(cases):
        log.unlink(missing_ok=True)
        entry = engine.put(f"t{i}", config(tmp_path, namespace, command=command), **record)
        await entry.first_done.wait()
        assert entry.outcome.ok and entry.outcome.writes == 0, entry.outcome.message
        assert entry.outcome.commands == runs, f"{record}: {entry.outcome.commands} runs"
        assert (log.read_text().count("run") if log.exists() else 0) == runs
        if runs:
            assert entry.outcome.command_succeeded_digest == digest
        await engine.remove(f"t{i}")


async def test_a_changed_command_runs_for_content_its_predecessor_already_ran_for(
        client: Client, engine: Engine, namespace: str, tmp_path: Path) -> None:
    """A Template whose command changed while its output did not: the new command runs once."""
    out, first, second = tmp_path / "out", tmp_path / "first", tmp_path / "second"
    await client.create(CONFIGMAPS, cm("a", "1"), namespace=namespace)
    entry = engine.put("t", config(tmp_path, namespace, command=f"echo run >> {first}"), command_succeeded="")
    await entry.first_done.wait()
    assert entry.outcome.ok and out.read_text() == "a=1\n" and first.read_text() == "run\n"
    entry = engine.put("t", config(tmp_path, namespace, command=f"echo run >> {second}"))
    await entry.first_done.wait()
    assert entry.outcome.ok and entry.outcome.writes == 0, entry.outcome.message
    assert second.read_text() == "run\n" and first.read_text() == "run\n"
