"""The ProcessSet driver's decisions as data: what plan() does for each situation a replica can
be in, without a process in sight."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from setpoint.drivers.process.plan import Exit, Stop, plan, restart_delay
from setpoint.drivers.process.records import Record
from setpoint.drivers.process.spec import Spec, parse

RESET = 10.0


def spec(replicas: int = 2, command: str = "web", **extra: Any) -> Spec:
    body: dict[str, Any] = {"command": command, "replicas": replicas,
                            "restartBackoff": {"initialSeconds": 1, "maxSeconds": 8}, **extra}
    return parse({"metadata": {"uid": "u1", "namespace": "ns", "name": "p"}, "spec": body}, 1024)


def running(replica: int, s: Spec, pid: int = 100, started_at: float = 0.0, **kw: Any) -> Record:
    return Record(replica=replica, spec_hash=s.spec_hash, pid=pid + replica, start_ticks=7,
                  started_at=started_at, **kw)


def test_a_new_process_set_starts_every_replica() -> None:
    s = spec(3)
    out = plan({}, s, now=50.0, exits={}, backoff_reset=RESET)
    assert sorted(out.starts) == [0, 1, 2] and not out.stops and not out.drop and not out.writes
    assert all(r.spec_hash == s.spec_hash and r.restarts == 0 for r in out.starts.values())


def test_live_replicas_of_the_current_spec_are_left_alone() -> None:
    s = spec(2)
    out = plan({0: running(0, s), 1: running(1, s)}, s, now=50.0, exits={}, backoff_reset=RESET)
    assert out.idle


def test_a_spec_change_replaces_live_replicas_and_starts_counting_over() -> None:
    old, new = spec(1, "web"), spec(1, "web2")
    out = plan({0: running(0, old, restarts=4, streak=3)}, new, now=50.0, exits={}, backoff_reset=RESET)
    assert out.stops == [Stop(0, 100, 7)]
    assert out.starts[0].spec_hash == new.spec_hash and out.starts[0].restarts == 0 and out.starts[0].streak == 0


def test_scaling_down_stops_and_drops_the_replicas_above_the_count() -> None:
    s3, s1 = spec(3), spec(1)
    records = {r: running(r, s3) for r in range(3)}
    out = plan(records, s1, now=50.0, exits={}, backoff_reset=RESET)
    assert out.drop == [1, 2] and out.stops == [Stop(1, 101, 7), Stop(2, 102, 7)] and not out.starts


def test_a_first_death_restarts_at_once_and_a_second_in_a_row_waits() -> None:
    s = spec(1)
    first = plan({0: running(0, s, started_at=40.0)}, s, now=41.0, exits={0: Exit(41.0, 3)}, backoff_reset=RESET)
    assert first.writes[0].streak == 1 and first.writes[0].exit_code == 3 and first.writes[0].pid == 0
    assert first.stops == [Stop(0, 100, 7)], "what the dead replica's session left is stopped"
    assert first.starts[0].restarts == 1
    restarted = running(0, s, started_at=41.0, restarts=1, streak=1)
    second = plan({0: restarted}, s, now=41.5, exits={0: Exit(41.5, 3)}, backoff_reset=RESET)
    assert second.writes[0].streak == 2 and second.writes[0].retry_at == 41.5 + restart_delay(2, 1, 8)
    assert 0 not in second.starts, "restarted within its backoff"
    later = plan({0: second.writes[0]}, s, now=43.0, exits={}, backoff_reset=RESET)
    assert later.starts[0].restarts == 2


def test_a_long_run_forgets_the_streak() -> None:
    s = spec(1)
    out = plan({0: running(0, s, started_at=0.0, streak=5)}, s, now=100.0, exits={0: Exit(100.0, 1)},
               backoff_reset=RESET)
    assert out.writes[0].streak == 1 and 0 in out.starts


def test_backoff_doubles_up_to_its_maximum() -> None:
    assert [restart_delay(n, 1, 8) for n in range(1, 8)] == [0, 1, 2, 4, 8, 8, 8]


@st.composite
def situations(draw: st.DrawFn) -> tuple[dict[int, Record], Spec, dict[int, Exit], float]:
    s = spec(draw(st.integers(0, 5)), draw(st.sampled_from(["a", "b"])))
    other = spec(1, "a" if s.command == "b" else "b")
    now = 1000.0
    records: dict[int, Record] = {}
    exits: dict[int, Exit] = {}
    for r in draw(st.sets(st.integers(0, 7), max_size=6)):
        h = draw(st.sampled_from([s.spec_hash, other.spec_hash]))
        pid = draw(st.sampled_from([0, 200 + r]))
        exited_at = None if pid else draw(st.sampled_from([None, now - 1, now - 100]))
        retry_at = None if exited_at is None else draw(st.sampled_from([None, now - 1, now + 5]))
        records[r] = Record(replica=r, spec_hash=h, pid=pid, start_ticks=1, started_at=now - 50,
                            exited_at=exited_at, retry_at=retry_at)
        if pid and draw(st.booleans()):
            exits[r] = Exit(now, draw(st.sampled_from([None, 0, 1, -9])))
    return records, s, exits, now


@given(situations())
def test_every_plan_keeps_the_promises(case: tuple[dict[int, Record], Spec, dict[int, Exit], float]) -> None:
    records, s, exits, now = case
    out = plan(records, s, now, exits, RESET)
    stopped = {x.replica for x in out.stops}
    assert out.drop == sorted(r for r in records if r >= s.replicas)
    assert all(r < s.replicas for r in out.starts), "never starts above the count"
    assert all(rec.spec_hash == s.spec_hash and rec.pid == 0 for rec in out.starts.values()), \
        "a start is from a record of the current spec with no process"
    for r in range(s.replicas):
        rec = records.get(r)
        live = rec is not None and rec.pid and r not in exits
        if live and rec is not None and rec.spec_hash == s.spec_hash:
            assert r not in out.starts and r not in stopped, "a healthy replica is touched"
        elif live:
            assert r in out.starts and r in stopped, "a replica of an old spec is not replaced"
        elif r not in out.starts:
            # only a replica waiting out its backoff may stay down
            waiting = out.writes.get(r) or rec
            assert waiting is not None and waiting.retry_at is not None and waiting.retry_at > now
    for r in exits:
        if r < s.replicas:
            assert r in stopped and out.writes[r].pid == 0 and out.writes[r].exited_at == now
