"""Running the guides' complete programs exactly as a reader would: the CRD from the guide's YAML
block, the program saved to a file and started with ``python`` and a kubeconfig."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from setpoint.client import AlreadyExists, Client, Resource

DOCS = Path(__file__).resolve().parents[2] / "docs"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False,
                kind="CustomResourceDefinition")
EVENTS = Resource("", "v1", "events", kind="Event")


def blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / doc).read_text(), re.S)


async def apply_crd_from(doc: str, client: Client) -> dict[str, Any]:
    crd = yaml.safe_load(blocks(doc, "yaml")[0])
    with contextlib.suppress(AlreadyExists):
        await client.create(CRDS, crd)
    return crd


@contextlib.contextmanager
def program_from(doc: str, name: str, kubeconfig: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The guide's first python block saved as ``name`` in ``cwd`` and run there."""
    (cwd / name).write_text(blocks(doc, "python")[0])
    log = open(cwd / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, name], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def warning_events(client: Client, namespace: str, name: str) -> list[dict[str, Any]]:
    events = (await client.list(EVENTS, namespace=namespace)).items
    return [e for e in events if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") == name]
