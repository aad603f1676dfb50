"""``setpoint template`` as a user runs it: a real process, real files, real commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import ServerProcess, wait_until

TEMPLATE = "{% for cm in objects('configmaps', {'app': 'cli'}) %}{{ cm.metadata.name }}={{ cm.data.v }}\n{% endfor %}"


def setpoint(srv: ServerProcess, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "setpoint", "template", *args, "--namespace", NS,
                           "--kubeconfig", str(srv.data_dir / "kubeconfig.yaml")],
                          capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


NS = "default"


def put_cm(c: httpx.Client, name: str, value: str) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "cli"}},
            "data": {"v": value}}
    r = c.post(f"/api/v1/namespaces/{NS}/configmaps", json=body)
    if r.status_code == 409:
        r = c.patch(f"/api/v1/namespaces/{NS}/configmaps/{name}", json={"data": {"v": value}},
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code in (200, 201), r.text


def test_once_writes_runs_the_command_and_only_when_the_content_changed(
        server: ServerProcess, tmp_path: Path) -> None:
    src, out, ran = tmp_path / "t.j2", tmp_path / "out", tmp_path / "ran"
    src.write_text(TEMPLATE)
    with server.sync_client() as c:
        put_cm(c, "once-a", "1")
    r = setpoint(server, "-t", f"{src}:{out}:echo ran >> {ran}", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "once-a=1\n" in out.read_text() and ran.read_text() == "ran\n"
    r = setpoint(server, "-t", f"{src}:{out}:echo ran >> {ran}", "--once")
    assert r.returncode == 0 and ran.read_text() == "ran\n", "an unchanged file ran its command again"


def test_dry_prints_and_writes_nothing(server: ServerProcess, tmp_path: Path) -> None:
    src, out = tmp_path / "t.j2", tmp_path / "out"
    src.write_text(TEMPLATE)
    with server.sync_client() as c:
        put_cm(c, "dry-a", "7")
    r = setpoint(server, "-t", f"{src}:{out}:touch {tmp_path / 'ran'}", "--dry")
    assert r.returncode == 0, r.stderr
    assert "dry-a=7" in r.stdout and not out.exists() and not (tmp_path / "ran").exists()


def test_a_broken_template_fails_with_its_name_and_line(server: ServerProcess, tmp_path: Path) -> None:
    src, out = tmp_path / "broken.j2", tmp_path / "out"
    src.write_text("fine\n{{ get('configmaps', 'no-such-map').data }}\n")
    r = setpoint(server, "-t", f"{src}:{out}", "--once")
    assert r.returncode == 1
    assert f"template {src} line 2" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not out.exists()


CHILD = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGHUP, lambda *_: log.write("hup\\n"))
signal.signal(signal.SIGTERM, lambda *_: (log.write("term\\n"), sys.exit(0)))
log.write("started\\n")
while True:
    time.sleep(1)
"""


def test_exec_supervises_a_child_and_signals_it_on_a_change(server: ServerProcess, tmp_path: Path) -> None:
    src, out, child, log = tmp_path / "t.j2", tmp_path / "out", tmp_path / "child.py", tmp_path / "child.log"
    src.write_text(TEMPLATE)
    child.write_text(CHILD)
    with server.sync_client() as c:
        put_cm(c, "exec-a", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "template", "-t", f"{src}:{out}", "--exec",
             f"{sys.executable} {child} {log}", "--kubeconfig", str(server.data_dir / "kubeconfig.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: log.exists() and "started" in log.read_text(), timeout=30, what="the child")
            put_cm(c, "exec-a", "2")
            wait_until(lambda: "exec-a=2" in out.read_text(), timeout=20, what="the change rendered")
            wait_until(lambda: log.read_text().count("hup") == 1, timeout=10, what="SIGHUP to the child")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    wait_until(lambda: "term" in log.read_text(), what="the child stopped with SIGTERM")
    assert not any(str(child).encode() in Path(f"/proc/{p}/cmdline").read_bytes()
                   for p in os.listdir("/proc") if p.isdigit() and Path(f"/proc/{p}/cmdline").exists())
