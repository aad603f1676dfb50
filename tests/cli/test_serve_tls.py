"""``setpoint serve`` serves TLS by default with a certificate it makes for itself, and what it
prints works as printed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from setpoint.server.tls import ensure_self_signed
from tests.servers import ServerProcess, wait_until


def sans(cert: Path) -> list[str]:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return [str(n.value) for n in c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def test_the_certificate_is_kept_and_made_again_for_a_new_address(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path, "127.0.0.1")
    first = cert.read_bytes()
    assert "127.0.0.1" in sans(cert) and oct(key.stat().st_mode & 0o777) == "0o600"
    assert ensure_self_signed(tmp_path, "127.0.0.1")[0].read_bytes() == first  # clients keep trusting it
    ensure_self_signed(tmp_path, "10.1.2.3")
    assert cert.read_bytes() != first and "10.1.2.3" in sans(cert)


def test_plain_serve_is_https_and_the_printed_commands_work(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data").start()
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        wait_until(lambda: any("watch=1" in line for line in srv.output), what="the announcement")
        lines = [line.strip() for line in srv.output if line.startswith("  ")]
        commands = [line for line in lines if line.startswith(("curl ", "kubectl "))]
        assert commands, srv.output
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for command in commands:
            argv = shlex.split(command)
            if argv[0] == "curl":
                if not shutil.which("curl"):
                    continue
                argv += ["--max-time", "2"]  # the watch streams until stopped
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
            assert "default" in r.stdout, f"{command}: rc={r.returncode} {r.stdout} {r.stderr}"
            if argv[0] == "kubectl":
                assert r.returncode == 0, r.stderr
    finally:
        srv.stop()


@pytest.mark.parametrize("args", [["--insecure-http", "--tls-cert", "x", "--tls-key", "y"]])
def test_insecure_http_and_tls_options_conflict(tmp_path: Path, args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "setpoint", "serve", "--data-dir", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--insecure-http" in r.stderr, r.stderr
