"""The test support's own guarantees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import kill_left_behind


def test_processes_left_in_a_tests_directory_are_killed(tmp_path: Path) -> None:
    by_cwd = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path)
    by_arg = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", str(tmp_path / "x")])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = kill_left_behind(tmp_path)
        assert {by_cwd.pid, by_arg.pid} <= set(killed) and other.pid not in killed
        assert by_cwd.wait(10) != 0 and by_arg.wait(10) != 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()
