"""One server per data directory: a second ``setpoint serve`` or ``setpoint dev`` on it refuses
to start, names the running server's pid, and leaves its files alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import ServerProcess

ENV = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"COLUMNS": "200", "NO_COLOR": "1"}


def setpoint(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "setpoint", *args], capture_output=True, text=True,
                          timeout=60, env=ENV, cwd=cwd)


def snapshot(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(data_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(data_dir.rglob("*")) if p.is_file() and not p.name.startswith("state.db")}


def test_a_second_server_on_the_same_data_directory_refuses_and_touches_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    try:
        assert first.proc is not None
        (data / "logs").mkdir()
        (data / "logs" / "server.log").write_text("the running server's log\n")
        before = snapshot(data)

        r = setpoint("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"pid {first.proc.pid}" in r.stdout + r.stderr, r.stdout + r.stderr
        assert "setpoint serving" not in r.stdout

        # What `make run` runs: checked before it writes anything (logs, node credentials).
        r = setpoint("dev", "--data-dir", str(data), "--example", str(tmp_path / "none.yaml"))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"pid {first.proc.pid}" in r.stdout + r.stderr and "already running" in r.stdout + r.stderr

        assert snapshot(data) == before
        with first.sync_client() as c:  # the first one is unharmed
            assert c.post("/api/v1/namespaces", json={"metadata": {"name": "still-mine"}}).status_code == 201
    finally:
        first.stop()
    # The kernel dropped the lock with the process: the next server starts.
    again = ServerProcess(data).start()
    try:
        with again.sync_client() as c:
            assert c.get("/api/v1/namespaces/still-mine").status_code == 200
    finally:
        again.stop()


def test_one_sqlite_file_under_two_data_directories(tmp_path: Path) -> None:
    """The database file is locked too when it lives outside the data directory."""
    db = tmp_path / "shared" / "state.db"
    db.parent.mkdir()
    first = ServerProcess(tmp_path / "a", ["--store", f"sqlite://{db}"]).start()
    try:
        assert first.proc is not None
        r = setpoint("serve", "--data-dir", str(tmp_path / "b"), "--listen", "127.0.0.1:0",
                     "--store", f"sqlite://{db}")
        assert r.returncode == 1 and f"pid {first.proc.pid}" in r.stdout + r.stderr, r.stdout + r.stderr
        assert not (tmp_path / "b" / "kubeconfig.yaml").exists()
    finally:
        first.stop()


def test_the_data_directory_and_store_are_private(tmp_path: Path) -> None:
    import stat

    from tests.servers import ServerProcess

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    srv = ServerProcess(data).start()
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for p in data.iterdir():
            if p.name.startswith("state.db"):
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        srv.stop()
