"""A kopf operator, unchanged, against a real ``setpoint serve``: handlers, finalizers, status
patches, events, and a restart that does not re-run completed handlers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import Kubectl, widget_crd
from tests.servers import ServerProcess, wait_until

OPERATOR = Path(__file__).with_name("kopf_operator.py")


class Operator:
    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.kubeconfig, self.namespace, self.log = kubeconfig, namespace, log
        self.proc: subprocess.Popen[str] | None = None
        self.output = log.with_suffix(".out")

    def start(self) -> None:
        starts = self.count("startup")
        out = open(self.output, "a")  # the child process writes to it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", self.namespace, str(OPERATOR)],
            stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "OPERATOR_LOG": str(self.log)})
        out.close()
        wait_until(lambda: self.count("startup") > starts, timeout=30, what="operator startup")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def count(self, what: str, name: str | None = None) -> int:
        return sum(1 for r in self.records() if r["what"] == what and (name is None or r["name"] == name))


@pytest.fixture(scope="module")
def k(kubectl: Kubectl) -> Kubectl:
    crd = widget_crd()
    # kopf keeps handler results and progress in status, so the schema lets status hold them
    # (as kopf's documentation tells operator authors to do).
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    status["x-kubernetes-preserve-unknown-fields"] = True
    kubectl.apply(crd)
    return kubectl


@pytest.fixture
def operator(tls_server: ServerProcess, k: Kubectl, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(k.kubeconfig, k.namespace, tmp_path / "handlers.jsonl")
    op.start()
    yield op
    op.stop()


def widget(name: str, size: int) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}}


def test_kopf_operator(operator: Operator, k: Kubectl) -> None:
    k.apply(widget("op1", 1))
    wait_until(lambda: operator.count("create", "op1") == 1, timeout=30, what="create handler")
    obj = wait_until(lambda: (o := k.json("get", "wd", "op1"))["status"].get("created") and o,
                     timeout=30, what="handler result in status")
    assert obj["status"]["created"] == {"size": 1} and obj["status"]["observed"] == 1
    assert any("kopf" in f for f in obj["metadata"]["finalizers"])
    k("patch", "wd", "op1", "--type=merge", "-p", '{"spec":{"size":2}}')
    wait_until(lambda: operator.count("update", "op1") == 1, timeout=30, what="update handler")
    wait_until(lambda: k.json("get", "wd", "op1")["status"].get("observed") == 2, timeout=30,
               what="status patched by the update handler")
    # kopf posts its handlers' outcomes as Events, from a queue of its own.
    events = wait_until(lambda: (e := k("get", "events", "--field-selector", "involvedObject.name=op1"))
                        and "succeeded" in e and e, timeout=30, what="events posted by kopf")
    assert "Handler 'created' succeeded" in events and "widget/op1" in events
    assert "Reconciled" in k("describe", "wd", "op1").split("Events:", 1)[1]

    # A restarted operator does not run completed handlers again...
    operator.stop()
    operator.start()
    k.apply(widget("op2", 5))
    wait_until(lambda: operator.count("create", "op2") == 1, timeout=30, what="create after restart")
    assert operator.count("create", "op1") == 1 and operator.count("update", "op1") == 1
    # ...and it handles what changed while it was down.
    operator.stop()
    k("patch", "wd", "op2", "--type=merge", "-p", '{"spec":{"size":6}}')
    operator.start()
    wait_until(lambda: operator.count("update", "op2") == 1, timeout=30, what="update made while down")

    # Deletion waits for the operator's finalizer, which its delete handler releases.
    k("delete", "wd", "op1", "--timeout=60s")
    assert operator.count("delete", "op1") == 1
    assert k.run("get", "wd", "op1", check=False).returncode != 0
    assert operator.count("create", "op1") == 1
