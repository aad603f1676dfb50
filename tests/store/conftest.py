"""Session-wide servers for the store tests: one PostgreSQL (each test gets schemas of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.services import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(fsync=False).init().start()  # durability is tested elsewhere
    try:
        yield server
    finally:
        server.remove()
