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

import pytest

from setpoint.agent.conditions import is_converged
from tests.servers import alive as _alive

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("transfer", ["watch", "command"])
def test_dev_brings_up_server_controllers_agent_and_example(tmp_path: Path, transfer: str) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-m", "setpoint", "dev", "--data-dir", str(tmp_path / "sp"),
                             "--transfer", transfer],
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
        nats_pids = [int(p.stem.rsplit("_", 1)[1]) for p in (tmp_path / "sp" / "nats" / "ports").glob("*.ports")]
        assert len(nats_pids) == (1 if transfer == "command" else 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # it gives its children 10 s to stop, then kills them
    # Everything it started has stopped, the example's processes included: no orphan is left
    # re-parented to PID 1.
    assert proc.returncode in (0, 1, 130)
    assert "stopping" in out.read_text()
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes of the demo still running after dev stopped: {alive}"
    agent_log = (tmp_path / "sp" / "logs" / "agent-local.log").read_text()
    assert "stopped the processes of 1 ProcessSets" in agent_log and f"transfer {transfer}" in agent_log
    for nats_pid in nats_pids:
        assert not _alive(nats_pid), "the NATS server dev started outlived it"


def test_dev_tears_down_everything_when_its_control_plane_dies(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-m", "setpoint", "dev", "--data-dir", str(tmp_path / "sp")],
                            cwd=tmp_path, stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        state = tmp_path / "sp" / "agent-local" / "processes"
        while not any(state.glob("*/0.json")) or not any(state.glob("*/1.json")):
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)  # another process's files: nothing to wait on but them
        pids = _demo_pids(state)
        server = [p for p in _children(proc.pid) if b"serve" in _cmdline(p)]
        assert server, "no server process found"
        os.kill(server[0], signal.SIGKILL)  # the control plane dies
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert "a process stopped" in out.read_text()
    assert not alive, f"the demo's processes outlived dev: {alive}"


def _demo_pids(state: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while True:
        pids = [json.loads(p.read_text()).get("pid", 0) for p in state.glob("*/*.json")]
        if len(pids) == 2 and all(pids):
            return pids
        assert time.monotonic() < deadline, pids
        time.sleep(0.1)  # the agent writes the pid after the spawn


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
