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


async def run_as_written(doc: str, program: str, out_dir: str, suffix: str, server: Any, tmp_path: Path) -> None:
    """The guide's CRD applied, its program saved as ``program`` and run with ``python``: it makes
    ``out_dir`` itself, writes a file per object (``NAMESPACE.NAME`` + ``suffix``), refuses a text
    over 1000 characters with a condition and a Warning Event, and lets both objects be deleted."""
    from setpoint.agent.conditions import get_condition
    from setpoint.client import NotFound
    from tests.agent.support import eventually, prepare

    async with Client(server.client_config()) as client:
        crd = await apply_crd_from(doc, client)
        names = crd["spec"]["names"]
        resource = Resource(crd["spec"]["group"], "v1", names["plural"], kind=names["kind"])

        async def served() -> bool:
            try:
                await client.list(resource, namespace="default", limit=1)
                return True
            except NotFound:
                return False

        await eventually(served, what=f"{names['kind']} served")
        ns = await prepare(client)
        with program_from(doc, program, server.data_dir / "kubeconfig.yaml", tmp_path) as proc:
            await client.create(resource, {"metadata": {"name": "hello"}, "spec": {"text": "hi"}}, namespace=ns)
            target = tmp_path / out_dir / f"{ns}.hello{suffix}"
            await eventually(lambda: target.exists(), timeout=20, what=f"{out_dir}/ made and the file written")
            await client.create(resource, {"metadata": {"name": "long"}, "spec": {"text": "x" * 2000}}, namespace=ns)

            async def refused() -> bool:
                cond = get_condition((await client.get(resource, "long", namespace=ns)).get("status"), "Ready")
                return (cond is not None and cond["reason"] == "TooLong"
                        and bool(await warning_events(client, ns, "long")))

            await eventually(refused, timeout=20, what="the refusal as a condition and a Warning Event")
            for name in ("long", "hello"):
                await client.delete(resource, name, namespace=ns)

            async def both_gone() -> bool:
                return not (await client.list(resource, namespace=ns)).items and not target.exists()

            await eventually(both_gone, timeout=20, what="both deleted, the failed one included")
            assert proc.poll() is None, (tmp_path / f"{program}.log").read_text()
