"""Schemathesis over every OpenAPI v3 group the server serves: generated requests (bounded and
seeded, so the run is short and repeatable) must never get a 5xx. New endpoints are fuzzed from
their first day, since the groups come from the server itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import ServerProcess

EXAMPLES_PER_OPERATION = 8


def _groups(server: ServerProcess) -> list[tuple[str, dict[str, Any]]]:
    with server.sync_client() as c:
        root = c.get("/openapi/v3").json()
        return [(name, c.get(entry["serverRelativeURL"]).json()) for name, entry in sorted(root["paths"].items())]


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: generated requests delete what they find (the default namespace too)."""
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz")).start()
    yield srv
    srv.stop()


@pytest.mark.timeout(300)
def test_no_generated_request_gets_a_5xx(own_server: ServerProcess) -> None:
    server = own_server
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for _group, doc in _groups(server):
        schema = schemathesis.openapi.from_dict(doc)
        for result in schema.get_all_operations():
            op = result.ok()
            operations += 1

            _fuzz(op, server, failures, calls)
    assert operations > 50 and len(calls) >= 2 * operations  # every group was read and fuzzed
    assert not failures, "\n".join(failures[:20])


def _fuzz(op: Any, server: ServerProcess, failures: list[str], calls: list[int]) -> None:
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(op.as_strategy())
        if case.query and str(case.query.get("watch", "")).lower() in ("true", "1"):
            case.query["timeoutSeconds"] = 1  # a watch that runs for minutes proves nothing more
        response = case.call(base_url=server.url, headers=server.headers, verify=str(server.ca), timeout=15)
        calls.append(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

    check()
