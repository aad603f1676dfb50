"""``setpoint template`` as a user runs it: a real process, real files, real commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from setpoint.cli.template import parse_wait
from tests.servers import ServerProcess, wait_until

TEMPLATE = "{% for cm in objects('configmaps', {'app': 'cli'}) %}{{ cm.metadata.name }}={{ cm.data.v }}\n{% endfor %}"


def setpoint(srv: ServerProcess, *args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "setpoint", "template", *args, "--namespace", NS,
                           "--kubeconfig", str(srv.data_dir / "kubeconfig.yaml")],
                          capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


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


def test_dry_once_prints_and_writes_nothing(server: ServerProcess, tmp_path: Path) -> None:
    src, out = tmp_path / "t.j2", tmp_path / "out"
    src.write_text(TEMPLATE)
    with server.sync_client() as c:
        put_cm(c, "dry-a", "7")
    r = setpoint(server, "-t", f"{src}:{out}:touch {tmp_path / 'ran'}", "--dry", "--once")
    assert r.returncode == 0, r.stderr
    assert "dry-a=7" in r.stdout and not out.exists() and not (tmp_path / "ran").exists()


def test_dry_with_exec_is_refused_before_anything_runs(server: ServerProcess, tmp_path: Path) -> None:
    src, out, ran = tmp_path / "t.j2", tmp_path / "out", tmp_path / "ran"
    src.write_text(TEMPLATE)
    r = setpoint(server, "-t", f"{src}:{out}", "--dry", "--exec", f"touch {ran}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--dry runs no command" in r.stdout + r.stderr
    assert not ran.exists() and not out.exists()


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


class Running:
    """``setpoint template`` running in the background, its output collected line by line."""

    def __init__(self, srv: ServerProcess, *args: str, kubeconfig: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "template", *args, "--namespace", NS,
             "--kubeconfig", str(kubeconfig or srv.data_dir / "kubeconfig.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_once_reports_a_template_that_raises_and_renders_the_others(server: ServerProcess, tmp_path: Path) -> None:
    """A filter raising something no one listed (yaml cannot represent a range): --once exits 1
    at once with the template and line, the file is not written, the other template is."""
    bad, good, bad_out, good_out = tmp_path / "bad.j2", tmp_path / "good.j2", tmp_path / "bad", tmp_path / "good"
    bad.write_text("fine\n{{ range(3) | toyaml }}\n")
    good.write_text(TEMPLATE)
    with server.sync_client() as c:
        put_cm(c, "raise-a", "1")
    started = time.monotonic()
    r = setpoint(server, "-t", f"{bad}:{bad_out}", "-t", f"{good}:{good_out}", "--once", timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert time.monotonic() - started < 20
    assert f"template {bad} line 2: RepresenterError" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not bad_out.exists() and "raise-a=1\n" in good_out.read_text()


def test_two_templates_in_one_command_each_with_its_command(server: ServerProcess, tmp_path: Path) -> None:
    one, two, log = tmp_path / "one.j2", tmp_path / "two.j2", tmp_path / "ran"
    one.write_text("one {{ configmap('two-a').v }}\n")
    two.write_text("two {{ configmap('two-a').v }}\n")
    with server.sync_client() as c:
        put_cm(c, "two-a", "5")
    r = setpoint(server, "-t", f"{one}:{tmp_path / 'one'}:echo one >> {log}",
                 "-t", f"{two}:{tmp_path / 'two'}:echo two >> {log}", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "one").read_text() == "one 5\n" and (tmp_path / "two").read_text() == "two 5\n"
    assert sorted(log.read_text().split()) == ["one", "two"]


def test_wait_min_max_is_parsed_and_a_bad_value_refused_naming_the_option(
        server: ServerProcess, tmp_path: Path) -> None:
    assert parse_wait("500ms:2s") == (0.5, 2.0)
    assert parse_wait("1s") == (1.0, 4.0), "MAX defaults to 4 x MIN"
    assert parse_wait("1m:1h") == (60.0, 3600.0)
    assert parse_wait("0.25") == (0.25, 1.0)
    src, out = tmp_path / "t.j2", tmp_path / "out"
    src.write_text(TEMPLATE)
    with server.sync_client() as c:
        put_cm(c, "wait-a", "1")
    r = setpoint(server, "-t", f"{src}:{out}", "--wait", "50ms:200ms", "--once")
    assert r.returncode == 0 and "wait-a=1" in out.read_text(), r.stdout + r.stderr
    for bad, why in [("2s:1s", "MAX must not be below MIN"), ("soon", "'soon' is not a duration"),
                     ("1s:later", "'later' is not a duration")]:
        r = setpoint(server, "-t", f"{src}:{out}", "--wait", bad, "--once")
        assert r.returncode == 2, (bad, r.stdout + r.stderr)
        assert "'--wait'" in r.stderr and why in r.stderr, r.stderr


def test_server_option_overrides_the_kubeconfig(server: ServerProcess, tmp_path: Path) -> None:
    src, out = tmp_path / "t.j2", tmp_path / "out"
    src.write_text(TEMPLATE)
    config = yaml.safe_load((server.data_dir / "kubeconfig.yaml").read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(yaml.safe_dump(config))
    with server.sync_client() as c:
        put_cm(c, "server-a", "1")
    r = subprocess.run([sys.executable, "-m", "setpoint", "template", "-t", f"{src}:{out}", "--once",
                        "--kubeconfig", str(kubeconfig), "--server", server.url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "server-a=1\n" in out.read_text()


def test_dry_keeps_watching_and_prints_each_new_render(server: ServerProcess, tmp_path: Path) -> None:
    src, out = tmp_path / "t.j2", tmp_path / "out"
    src.write_text("{{ configmap('dry-w').v }}\n")
    with server.sync_client() as c:
        put_cm(c, "dry-w", "first")
        with Running(server, "-t", f"{src}:{out}:touch {tmp_path / 'ran'}", "--dry") as proc:
            wait_until(lambda: f"> {out}\nfirst\n" in proc.output, timeout=30, what="the first render printed")
            # Read by the template but not rendered: a render equal to the last one is not printed.
            r = c.patch(f"/api/v1/namespaces/{NS}/configmaps/dry-w", json={"metadata": {"labels": {"x": "y"}}},
                        headers={"Content-Type": "application/merge-patch+json"})
            assert r.status_code == 200, r.text
            put_cm(c, "dry-w", "second")
            wait_until(lambda: f"> {out}\nsecond\n" in proc.output, timeout=20, what="the change printed")
            assert proc.proc.poll() is None, "--dry without --once exited"
            assert proc.stop() == 0
    assert proc.output.count(f"> {out}\n") == 2, proc.output
    assert not out.exists() and not (tmp_path / "ran").exists()


SIGNALLED_CHILD = """
import signal, subprocess, sys, time
log = open(sys.argv[1], "a", buffering=1)
for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), lambda n, _: log.write(signal.Signals(n).name + "\\n"))
if sys.argv[2] == "stubborn":  # ignores SIGTERM, and has a child of its own
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "300"])
    log.write(f"grandchild {grandchild.pid}\\n")
else:
    signal.signal(signal.SIGTERM, lambda *_: (log.write("term\\n"), sys.exit(0)))
log.write("started\\n")
while True:
    time.sleep(1)
"""


def test_exec_reload_signal_sigusr1_reaches_the_child(server: ServerProcess, tmp_path: Path) -> None:
    src, out, child, log = tmp_path / "t.j2", tmp_path / "out", tmp_path / "child.py", tmp_path / "child.log"
    src.write_text(TEMPLATE)
    child.write_text(SIGNALLED_CHILD)
    with server.sync_client() as c:
        put_cm(c, "usr1-a", "1")
        with Running(server, "-t", f"{src}:{out}", "--exec", f"{sys.executable} {child} {log} polite",
                     "--exec-reload-signal", "SIGUSR1") as proc:
            wait_until(lambda: log.exists() and "started" in log.read_text(), timeout=30, what="the child")
            put_cm(c, "usr1-a", "2")
            wait_until(lambda: "usr1-a=2" in out.read_text(), timeout=20, what="the change rendered")
            wait_until(lambda: "SIGUSR1" in log.read_text(), timeout=10, what="SIGUSR1 to the child")
            proc.stop()
    lines = log.read_text().split()
    assert lines.count("SIGUSR1") == 1 and "SIGHUP" not in lines and "term" in lines, lines


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_exec_child_ignoring_the_kill_signal_is_killed_with_its_group_after_the_timeout(
        server: ServerProcess, tmp_path: Path) -> None:
    src, out, child, log = tmp_path / "t.j2", tmp_path / "out", tmp_path / "child.py", tmp_path / "child.log"
    src.write_text(TEMPLATE)
    child.write_text(SIGNALLED_CHILD)
    with server.sync_client() as c:
        put_cm(c, "stubborn-a", "1")
    with Running(server, "-t", f"{src}:{out}", "--exec", f"{sys.executable} {child} {log} stubborn",
                 "--exec-kill-timeout", "1s") as proc:
        wait_until(lambda: log.exists() and "started" in log.read_text(), timeout=30, what="the child")
        grandchild = int(log.read_text().split("grandchild ", 1)[1].split()[0])
        assert _alive(grandchild)
        proc.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.proc.wait(timeout=15)  # the child ignores SIGTERM: without the bound, this never ends
        assert time.monotonic() - started < 10
        assert "did not exit 1s after SIGTERM" in proc.output, proc.output
    wait_until(lambda: not _alive(grandchild), timeout=10, what="the child's own child killed with its group")
