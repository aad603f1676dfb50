"""``setpoint dev`` (what ``make run`` runs): the whole system comes up and the example converges."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from setpoint.agent.conditions import is_converged

ROOT = Path(__file__).resolve().parents[2]


def test_dev_brings_up_server_controllers_agent_and_example(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-m", "setpoint", "dev", "--data-dir", str(tmp_path / "sp")],
                            cwd=tmp_path, stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)  # reading another process's output: nothing to wait on but the file
        text = out.read_text()
        assert re.search(r"setpoint is running at https://127\.0\.0\.1:\d+", text)
        assert "ProcessSet/web" in text
        kubeconfig = tmp_path / "sp" / "kubeconfig.yaml"
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run([sys.executable, "-m", "setpoint", "get", "processsets", "web", "-o", "json",
                                "--kubeconfig", str(kubeconfig)], capture_output=True, text=True)
            if r.returncode == 0 and is_converged(json.loads(r.stdout)):
                obj = json.loads(r.stdout)
                break
            assert time.monotonic() < deadline, r.stdout + r.stderr
            time.sleep(0.2)
        assert obj["status"]["readyReplicas"] == 2 and obj["spec"]["nodeName"] == "local"
        # kubectl works with the kubeconfig as written (it sends tokens over TLS only).
        kubectl = Path(sys.executable).parent / "kubectl"
        if kubectl.exists():
            r = subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), "get", "processsets", "web",
                                "-o", "jsonpath={.status.readyReplicas}"], capture_output=True, text=True)
            assert r.returncode == 0 and r.stdout == "2", r.stderr
        pids = [p["pid"] for p in obj["status"]["processes"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # it gives its children 10 s to stop, then kills them
    # Everything it started has stopped; the example's processes keep running (they belong to
    # the node, not to the agent process) until the ProcessSet is deleted or the agent cleans up.
    assert proc.returncode in (0, 1, 130)
    assert "stopping" in out.read_text()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
