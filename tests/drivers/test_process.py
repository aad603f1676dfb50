"""The ProcessSet driver against real processes on this host (Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from setpoint.drivers.base import NotReady, OperationId, Permanent
from setpoint.drivers.process import (
    ProcessDriver,
    ProcessesNotReady,
    ProcessSetObservation,
    ProcessState,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process driver is Linux only")

SLEEP = ["-c", "import time; time.sleep(1e6)"]
# Exits with code 3 when sent SIGUSR1: a crash on demand.
CRASHABLE = ["-c", "import signal, sys, time\n"
             "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(3))\n"
             "while True: time.sleep(1e6)"]
DEADLINE = 10.0


# ------------------------------------------------------------------------------------------ helpers


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session, start ticks) from /proc/<pid>/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[3]), int(rest[19])


def alive(pid: int) -> bool:
    st = stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def catches(pid: int, sig: int) -> bool:
    """Whether the process has installed a handler for ``sig`` (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def marked(marker: str) -> set[int]:
    """Live processes started for this test (the spec env carries the marker)."""
    return {p for p in all_pids() if alive(p) and environ(p).get("SETPOINT_TEST_MARK") == marker}


def session(sid: int) -> set[int]:
    """Live members of a session (our replicas are session leaders)."""
    out = set()
    for p in all_pids():
        st = stat(p)
        if st is not None and st[1] == sid and st[0] not in ("Z", "X"):
            out.add(p)
    return out


async def wait_until(cond: Callable[[], bool | Awaitable[bool]], what: str, within: float = DEADLINE) -> None:
    end = time.monotonic() + within
    while True:
        res = cond()
        if inspect.isawaitable(res):
            res = await res
        if res:
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def converge(driver: ProcessDriver, obj: dict[str, Any], *,
                   allow_starting: bool = False) -> ProcessSetObservation:
    op = OperationId.for_object(obj, "ensure")
    try:
        return await driver.ensure(obj, await driver.observe(obj), op)
    except ProcessesNotReady as e:
        if allow_starting and e.reason == "Starting":
            return e.observed
        raise


def ready_pids(obs: ProcessSetObservation) -> dict[int, int]:
    return obs.pids


class Objects:
    """ProcessSet objects as the API returns them, defaults applied."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def make(self, replicas: int, *, args: list[str] | None = None, command: str = sys.executable,
             env: dict[str, str] | None = None, uid: str | None = None, name: str = "web", generation: int = 1,
             backoff: tuple[float, float] = (1.0, 60.0), grace: float = 2.0, **extra: Any) -> dict[str, Any]:
        env_list = [{"name": "SETPOINT_TEST_MARK", "value": self.marker}]
        env_list += [{"name": k, "value": v} for k, v in (env or {}).items()]
        spec: dict[str, Any] = {
            "command": command, "args": SLEEP if args is None else args, "env": env_list,
            "replicas": replicas, "restartBackoff": {"initialSeconds": backoff[0], "maxSeconds": backoff[1]},
            "stopGracePeriodSeconds": grace, **extra,
        }
        return {
            "apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
            "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}-{self.marker[:8]}",
                         "generation": generation},
            "spec": spec,
        }


def with_spec(obj: dict[str, Any], generation: int, **changes: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "generation": generation}, "spec": {**obj["spec"], **changes}}


def kill(pid: int) -> None:
    """SIGKILL a process and its process group."""
    for send in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)


def reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


async def kill_marked(marker: str) -> set[int]:
    """SIGKILL every process (and session) this test started; reap those that are our children."""
    found: set[int] = set()
    end = time.monotonic() + DEADLINE
    while (left := marked(marker)) and time.monotonic() < end:
        found |= left
        for pid in left:
            kill(pid)
        await asyncio.sleep(0.02)
    reap(found)
    return found


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def objects(marker: str) -> Objects:
    return Objects(marker)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def drivers(state_dir: Path, marker: str) -> AsyncIterator[Callable[..., ProcessDriver]]:
    """Makes drivers over one state dir; afterwards kills anything the test left running."""
    made: list[ProcessDriver] = []

    def make(**kw: Any) -> ProcessDriver:
        d = ProcessDriver(state_dir, **kw)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.close()
        left = await kill_marked(marker)
        if left:
            pytest.fail(f"the test left processes running: {sorted(left)}")


# ------------------------------------------------------------------------------------------ tests


async def test_scale_0_3_5_2(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str,
                             state_dir: Path) -> None:
    d = drivers()
    obj = objects.make(0)
    obs = await converge(d, obj)
    assert obs.pids == {} and marked(marker) == set()

    obj = with_spec(obj, 2, replicas=3)
    three = (await converge(d, obj)).pids
    assert sorted(three) == [0, 1, 2]
    assert marked(marker) == set(three.values())
    for r, pid in three.items():
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # a session and process group of its own
        env = environ(pid)
        assert env["SETPOINT_REPLICA"] == str(r)
        assert env["SETPOINT_PROCESSSET"] == "ns/web"
        assert env["SETPOINT_PROCESSSET_UID"] == obj["metadata"]["uid"]
    assert (await converge(d, obj)).pids == three  # idempotent

    obj = with_spec(obj, 3, replicas=5)
    five = (await converge(d, obj)).pids
    assert sorted(five) == [0, 1, 2, 3, 4]
    assert {r: five[r] for r in range(3)} == three
    assert marked(marker) == set(five.values())

    obj = with_spec(obj, 4, replicas=2)
    obs = await converge(d, obj)
    assert obs.pids == {0: three[0], 1: three[1]}
    assert [r.replica for r in obs.replicas] == [0, 1]
    assert marked(marker) == {three[0], three[1]}
    for r in (2, 3, 4):
        assert not alive(five[r])
        assert not (state_dir / obj["metadata"]["uid"] / f"{r}.json").exists()

    status = d.status_for(obj, obs)
    assert status["observedGeneration"] == 4
    assert status["replicas"] == 2 and status["readyReplicas"] == 2
    assert status["nodeName"] == d.node_name
    assert [(p["replica"], p["pid"], p["state"], p["restarts"]) for p in status["processes"]] == [
        (0, three[0], "Running", 0), (1, three[1], "Running", 0)]
    assert all(p["startedAt"].endswith("Z") for p in status["processes"])
    [cond] = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Ready", "True", "AllReplicasReady")
    assert cond["observedGeneration"] == 4

    await d.delete(obj, OperationId.for_object(obj, "delete"))
    assert marked(marker) == set()
    assert d.list_owners() == set()


async def test_kill_9_is_noticed_and_restored(drivers: Callable[..., ProcessDriver], objects: Objects,
                                              marker: str) -> None:
    exits: list[str] = []
    exited = asyncio.Event()

    def on_exit(uid: str) -> None:
        exits.append(uid)
        exited.set()

    d = drivers(on_exit=on_exit)
    obj = objects.make(2)
    before = (await converge(d, obj)).pids

    os.kill(before[0], signal.SIGKILL)
    await asyncio.wait_for(exited.wait(), DEADLINE)  # the driver noticed by itself
    assert exits == [obj["metadata"]["uid"]]
    seen = await d.observe(obj)
    dead = seen.replica(0)
    assert dead is not None and dead.state is ProcessState.EXITED and dead.exit_code == -signal.SIGKILL
    assert d.status_for(obj, seen)["readyReplicas"] == 1
    assert not alive(before[0]) and stat(before[0]) is None  # reaped, no zombie

    after = await converge(d, obj)
    assert after.pids[1] == before[1]
    assert after.pids[0] != before[0] and alive(after.pids[0])
    assert [(r.replica, r.restarts) for r in after.replicas] == [(0, 1), (1, 0)]
    assert marked(marker) == set(after.pids.values())
    assert exits == [obj["metadata"]["uid"]]  # its own restart is not reported as an exit
    await d.delete(obj, OperationId.for_object(obj, "delete"))


async def test_restart_backoff(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str) -> None:
    clock = FakeClock()
    d = drivers(clock=clock)
    obj = objects.make(1, args=CRASHABLE, backoff=(2.0, 8.0))

    async def crash() -> None:
        [pid] = marked(marker)
        await wait_until(lambda: catches(pid, signal.SIGUSR1), "the process to handle SIGUSR1")
        os.kill(pid, signal.SIGUSR1)
        await wait_until(lambda: not alive(pid), "the process to exit")

    first = await converge(d, obj)
    status = d.status_for(obj, first)
    assert status["conditions"][0]["status"] == "True"
    obj = {**obj, "status": status}

    await crash()
    obs = await converge(d, obj)  # the first restart is immediate
    assert obs.replica(0) is not None and obs.replica(0).restarts == 1  # type: ignore[union-attr]
    assert obs.pids[0] != first.pids[0]

    await crash()
    with pytest.raises(NotReady) as err:
        await converge(d, obj)
    assert isinstance(err.value, ProcessesNotReady) and err.value.reason == "Backoff"
    assert err.value.retry_after == pytest.approx(2.0)
    waiting = err.value.observed.replica(0)
    assert waiting is not None and waiting.state is ProcessState.BACKOFF and waiting.exit_code == 3
    assert waiting.restarts == 1 and marked(marker) == set()
    status = d.status_for(obj, err.value.observed)
    assert status["readyReplicas"] == 0
    assert (status["conditions"][0]["status"], status["conditions"][0]["reason"]) == ("False", "Backoff")
    assert "code 3" in status["conditions"][0]["message"]
    obj = {**obj, "status": status}

    clock.advance(1.5)
    with pytest.raises(NotReady) as err:  # still waiting: nothing is started
        await converge(d, obj)
    assert err.value.retry_after == pytest.approx(0.5)
    assert marked(marker) == set()
    assert (await d.observe(obj)).replica(0).state is ProcessState.BACKOFF  # type: ignore[union-attr]

    clock.advance(0.5)
    obs = await converge(d, obj)
    assert obs.replica(0).restarts == 2 and obs.replica(0).state is ProcessState.RUNNING  # type: ignore[union-attr]
    clock.advance(1)
    status = d.status_for(obj, obs)
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][0]["lastTransitionTime"] != obj["status"]["conditions"][0]["lastTransitionTime"]
    obj = {**obj, "status": status}
    clock.advance(5)
    unchanged = d.status_for(obj, obs)["conditions"][0]
    assert unchanged["lastTransitionTime"] == status["conditions"][0]["lastTransitionTime"]

    # Doubling, up to maxSeconds.
    for expected in (4.0, 8.0, 8.0):
        await crash()
        with pytest.raises(NotReady) as err:
            await converge(d, obj)
        assert err.value.retry_after == pytest.approx(expected)
        clock.advance(expected)
        await converge(d, obj)

    # A process that ran for long enough resets the backoff: restarted at once.
    clock.advance(10)
    await crash()
    obs = await converge(d, obj)
    assert obs.replica(0).restarts == 6 and len(marked(marker)) == 1  # type: ignore[union-attr]
    await d.delete(obj, OperationId.for_object(obj, "delete"))


async def test_spec_change_replaces_processes(drivers: Callable[..., ProcessDriver], objects: Objects,
                                              marker: str) -> None:
    d = drivers()
    obj = objects.make(2, env={"FOO": "a"})
    first = (await converge(d, obj)).pids

    obj = with_spec(obj, 2, stopGracePeriodSeconds=1, restartBackoff={"initialSeconds": 2, "maxSeconds": 4})
    assert (await converge(d, obj)).pids == first  # not part of what the processes run

    obj = with_spec(obj, 3, env=[*obj["spec"]["env"][:1], {"name": "FOO", "value": "b"}])
    obs = await converge(d, obj)
    second = obs.pids
    assert sorted(second) == [0, 1] and not set(second.values()) & set(first.values())
    assert not any(alive(p) for p in first.values())
    assert all(environ(p)["FOO"] == "b" for p in second.values())
    assert [r.restarts for r in obs.replicas] == [0, 0]
    assert marked(marker) == set(second.values())

    obj = with_spec(obj, 4, args=[*SLEEP, "extra-arg"])
    third = (await converge(d, obj)).pids
    assert not set(third.values()) & set(second.values())
    assert marked(marker) == set(third.values())
    await d.delete(obj, OperationId.for_object(obj, "delete"))


SERVE = ("import os, runpy, sys\n"
         "sys.argv = ['http.server', '--bind', '127.0.0.1', os.environ['PORT']]\n"
         "runpy.run_module('http.server', run_name='__main__')")


async def test_port_env_serves_http(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str,
                                    tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from setpoint\n")
    d = drivers()
    obj = objects.make(2, args=["-u", "-c", SERVE], portEnv="PORT", workingDir=str(site))

    first = await converge(d, obj, allow_starting=True)

    async def all_running() -> bool:
        obs = await d.observe(obj)
        return [r.state for r in obs.replicas] == [ProcessState.RUNNING] * 2

    await wait_until(all_running, "both servers to listen")
    obs = await d.observe(obj)
    ports = {r.replica: r.port for r in obs.replicas}
    assert ports == {r.replica: r.port for r in first.replicas}
    assert None not in ports.values() and len(set(ports.values())) == 2
    assert {environ(pid)["PORT"] for pid in obs.pids.values()} == {str(p) for p in ports.values()}
    async with httpx.AsyncClient(timeout=5) as client:
        for port in ports.values():
            resp = await client.get(f"http://127.0.0.1:{port}/hello.txt")
            assert resp.status_code == 200 and resp.text == "hello from setpoint\n"
    status = d.status_for(obj, obs)
    assert status["readyReplicas"] == 2
    assert {p["replica"]: p["port"] for p in status["processes"]} == ports

    # Killed: restarted on the same port, which serves again.
    os.kill(obs.pids[0], signal.SIGKILL)
    await wait_until(lambda: not alive(obs.pids[0]), "the server to die")
    restarted = await converge(d, obj, allow_starting=True)
    assert restarted.pids[0] != obs.pids[0] and restarted.replica(0).port == ports[0]  # type: ignore[union-attr]
    await wait_until(all_running, "the restarted server to listen")
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(f"http://127.0.0.1:{ports[0]}/hello.txt")
        assert resp.status_code == 200
    await d.delete(obj, OperationId.for_object(obj, "delete"))


async def test_new_driver_adopts_and_cleans_up_deleted_uids(drivers: Callable[..., ProcessDriver], objects: Objects,
                                                            marker: str, state_dir: Path) -> None:
    d1 = drivers()
    a = objects.make(3, name="a")
    b = objects.make(2, name="b")
    pids_a = (await converge(d1, a)).pids
    pids_b = (await converge(d1, b)).pids
    d1.close()  # the agent goes away; its processes stay

    os.kill(pids_a[2], signal.SIGKILL)  # one dies while nobody watches (a zombie: d1 never reaps it)
    await wait_until(lambda: not alive(pids_a[2]), "the process to die")

    d2 = drivers()
    seen = await d2.observe(a)
    assert seen.pids == {0: pids_a[0], 1: pids_a[1]}
    assert seen.replica(2).state is ProcessState.EXITED  # type: ignore[union-attr]
    assert stat(pids_a[2]) is None  # the new driver reaped the zombie, its former child

    obs = await converge(d2, a)
    assert {r: obs.pids[r] for r in (0, 1)} == {0: pids_a[0], 1: pids_a[1]}
    assert obs.pids[2] != pids_a[2] and obs.replica(2).restarts == 1  # type: ignore[union-attr]
    uid_a, uid_b = a["metadata"]["uid"], b["metadata"]["uid"]
    assert {p for p in marked(marker) if environ(p)["SETPOINT_PROCESSSET_UID"] == uid_a} == set(obs.pids.values())
    assert (await converge(d2, b)).pids == pids_b  # adopted as they are: no duplicates

    # b was deleted while the agent was down: only its uid is left to find.
    assert d2.list_owners() == {uid_a, uid_b}
    await d2.delete_uid(uid_b)
    assert not any(alive(p) for p in pids_b.values())
    assert all(session(p) == set() for p in pids_b.values())
    assert d2.list_owners() == {uid_a} and not (state_dir / uid_b).exists()
    assert marked(marker) == set(obs.pids.values())

    await d2.delete(a, OperationId.for_object(a, "delete"))
    assert marked(marker) == set() and d2.list_owners() == set()


async def test_a_reused_pid_is_not_ours(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str,
                                        state_dir: Path) -> None:
    d1 = drivers()
    obj = objects.make(1)
    [pid] = (await converge(d1, obj)).pids.values()
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: stat(pid) is None or not alive(pid), "the process to die")
    await d1.observe(obj)  # reaps it
    d1.close()

    # Another process now holds a pid the record names (as after a reboot or pid wrap-around).
    decoy = await asyncio.create_subprocess_exec(sys.executable, *SLEEP, start_new_session=True)
    try:
        path = state_dir / obj["metadata"]["uid"] / "0.json"
        rec = json.loads(path.read_text())
        rec["pid"] = decoy.pid
        path.write_text(json.dumps(rec))

        d2 = drivers()
        assert (await d2.observe(obj)).pids == {}
        obs = await converge(d2, obj)
        assert obs.pids[0] != decoy.pid and alive(obs.pids[0])
        await d2.delete(obj, OperationId.for_object(obj, "delete"))
        assert alive(decoy.pid)  # never signalled
    finally:
        decoy.kill()
        await decoy.wait()


async def test_interrupted_spawn_and_lost_record_are_found_again(
        drivers: Callable[..., ProcessDriver], objects: Objects, marker: str, state_dir: Path) -> None:
    d1 = drivers()
    obj = objects.make(2)
    pids = (await converge(d1, obj)).pids
    d1.close()

    # The agent died between spawning replica 0 and writing its pid; replica 1's record is lost.
    records = state_dir / obj["metadata"]["uid"]
    rec = json.loads((records / "0.json").read_text())
    (records / "0.json").write_text(json.dumps({**rec, "pid": 0, "start_ticks": 0, "pending": True}))
    (records / "1.json").write_bytes(b"\0garbage")

    d2 = drivers()
    assert (await d2.observe(obj)).pids == pids
    assert (await converge(d2, obj)).pids == pids  # adopted, not started twice
    assert marked(marker) == set(pids.values())
    assert json.loads((records / "0.json").read_text())["pid"] == pids[0]
    assert json.loads((records / "1.json").read_text())["pid"] == pids[1]
    await d2.delete(obj, OperationId.for_object(obj, "delete"))


TREE = ("import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # inherited by the child: only SIGKILL helps
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1e6)'])\n"
        "time.sleep(1e6)")


async def test_delete_stops_whole_sessions(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str,
                                           state_dir: Path) -> None:
    d = drivers()
    obj = objects.make(2, args=["-c", TREE], grace=0.3)
    pids = (await converge(d, obj)).pids
    await wait_until(lambda: all(len(session(p)) == 2 for p in pids.values()), "each replica to fork a child")
    members = set().union(*(session(p) for p in pids.values()))
    assert len(members) == 4 and marked(marker) == members

    started = time.monotonic()
    await d.delete(obj, OperationId.for_object(obj, "delete"))
    took = time.monotonic() - started
    assert 0.3 <= took < 5  # SIGTERM was ignored: SIGKILL after the grace period
    assert not any(alive(p) for p in members)
    assert all(session(p) == set() for p in pids.values())
    assert d.list_owners() == set() and not (state_dir / obj["metadata"]["uid"]).exists()
    await d.delete(obj, OperationId.for_object(obj, "delete"))  # nothing left: still fine


async def test_scale_down_uses_sigterm_first(drivers: Callable[..., ProcessDriver], objects: Objects,
                                             marker: str) -> None:
    d = drivers()
    obj = objects.make(2, grace=30)
    pids = (await converge(d, obj)).pids
    started = time.monotonic()
    obs = await converge(d, with_spec(obj, 2, replicas=1))
    assert time.monotonic() - started < 5  # exited on SIGTERM, no need to wait for the grace period
    assert obs.pids == {0: pids[0]} and not alive(pids[1])
    await d.delete(obj, OperationId.for_object(obj, "delete"))


async def test_bad_commands_and_specs_are_permanent(drivers: Callable[..., ProcessDriver], objects: Objects,
                                                    marker: str, tmp_path: Path) -> None:
    d = drivers()
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\nsleep 1000\n")
    cases = {
        "/nonexistent/setpoint-test-cmd": "not found",
        "setpoint-no-such-command-xyz": "not found on PATH",
        str(not_executable): "not an executable",
        str(tmp_path): "not an executable",
    }
    for i, (command, words) in enumerate(cases.items()):
        obj = objects.make(2, command=command, args=[], name=f"bad{i}")
        with pytest.raises(Permanent) as err:
            await converge(d, obj)
        assert command in str(err.value) and words in str(err.value)
    obj = objects.make(1, name="nowd", workingDir=str(tmp_path / "missing"))
    with pytest.raises(Permanent, match="missing"):
        await converge(d, obj)
    assert marked(marker) == set() and d.list_owners() == set()

    good = objects.make(1, name="invalid")
    for field, value in [("replicas", -1), ("replicas", "3"), ("replicas", True), ("args", "sleep"),
                         ("args", [1]), ("env", [{"value": "x"}]), ("env", [{"name": "A=B"}]), ("command", ""),
                         ("command", None), ("restartBackoff", {"initialSeconds": -1}),
                         ("stopGracePeriodSeconds", "soon"), ("portEnv", "A=B")]:
        bad = with_spec(good, 2, **{field: value})
        with pytest.raises(Permanent, match="invalid ProcessSet"):
            await d.observe(bad)
        with pytest.raises(Permanent, match="invalid ProcessSet"):
            await converge(d, bad)
    with pytest.raises(Permanent, match="uid"):
        await d.observe({**good, "metadata": {**good["metadata"], "uid": "../x"}})
    assert marked(marker) == set()

    # A spec change to a command that cannot run leaves the running processes alone.
    running = objects.make(2, name="running")
    pids = (await converge(d, running)).pids
    with pytest.raises(Permanent, match="setpoint-no-such-command-xyz"):
        await converge(d, with_spec(running, 2, command="setpoint-no-such-command-xyz"))
    assert all(alive(p) for p in pids.values()) and (await d.observe(running)).pids == pids
    await d.delete(running, OperationId.for_object(running, "delete"))

    # Optional fields missing altogether: the defaults apply.
    bare = {"metadata": {"uid": f"bare-{marker}", "name": "bare"},
            "spec": {"command": sys.executable, "args": SLEEP,
                     "env": [{"name": "SETPOINT_TEST_MARK", "value": marker}]}}
    obs = await converge(d, bare)
    assert sorted(obs.pids) == [0] and environ(obs.pids[0])["SETPOINT_PROCESSSET"] == "default/bare"
    assert "observedGeneration" not in d.status_for(bare, obs)
    await d.delete(bare, OperationId.for_object(bare, "delete"))


LOUD = ("import os, signal, sys, time\n"
        "print(os.environ['SETPOINT_REPLICA'], os.environ['SETPOINT_PROCESSSET'], os.environ['FOO'], flush=True)\n"
        "def loud(*_):\n"
        "    sys.stderr.write('e' * 20000)\n"
        "    sys.stderr.flush()\n"
        "signal.signal(signal.SIGUSR1, loud)\n"
        "while True: time.sleep(1e6)")


async def test_output_goes_to_a_bounded_log(drivers: Callable[..., ProcessDriver], objects: Objects, marker: str,
                                            state_dir: Path) -> None:
    d = drivers(max_log_bytes=4096)
    obj = objects.make(1, args=["-c", LOUD], env={"FOO": "bar"})
    pid = (await converge(d, obj)).pids[0]
    log = state_dir / obj["metadata"]["uid"] / "0.log"
    await wait_until(lambda: catches(pid, signal.SIGUSR1), "the process to handle SIGUSR1")
    assert log.stat().st_size < 4096 and (await converge(d, obj)).pids == {0: pid}
    assert log.stat().st_size > 0  # small: not rotated
    os.kill(pid, signal.SIGUSR1)
    await wait_until(lambda: log.stat().st_size > 20000, "the output")
    text = log.read_text()
    assert "0 ns/web bar\n" in text and text.startswith("--- setpoint ")

    assert (await converge(d, obj)).pids == {0: pid}  # the next pass rotates the log
    assert log.stat().st_size == 0
    assert "0 ns/web bar\n" in (log.parent / "0.log.1").read_text()
    await d.delete(obj, OperationId.for_object(obj, "delete"))
