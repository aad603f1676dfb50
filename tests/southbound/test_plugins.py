"""Driver plugins: a package built here and installed with pip is found through its entry points,
listed by ``setpoint drivers`` and usable, without any change to setpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from setpoint.drivers import plugins
from setpoint.drivers.base import OperationId

HOME = Path(__file__).resolve().parents[2] / "examples" / "home"

TINY_DRIVER = '''
"""A driver that keeps a note per object in memory."""
from setpoint.drivers.base import OperationId


class NoteDriver:
    """Keeps one note per object (a plugin test driver)."""

    name = "note"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.notes: dict[str, str] = {}
        self.ops: list[str] = []

    async def observe(self, obj):
        return self.notes.get(obj["metadata"]["uid"])

    async def ensure(self, obj, observed, op: OperationId):
        want = self.prefix + obj["spec"]["text"]
        if observed != want:
            self.notes[obj["metadata"]["uid"]] = want
            self.ops.append(str(op))
        return want

    async def delete(self, obj, op):
        self.notes.pop(obj["metadata"]["uid"], None)
'''


def build_wheel(out: Path, dist: str, version: str, files: dict[str, bytes], entry_points: str) -> Path:
    """A pure-Python wheel (PEP 427), as any build backend would produce it."""
    tag = dist.replace("-", "_")
    info = f"{tag}-{version}.dist-info"
    files = {**files,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: setpoint-tests\nRoot-Is-Purelib: true\n"
                               b"Tag: py3-none-any\n"),
             f"{info}/entry_points.txt": entry_points.encode()}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    path = out / f"{tag}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pip_install(wheel: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)


def setpoint(*args: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "setpoint", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pip --target directory with two driver packages installed: a tiny one built here, and
    the home example (``examples/home``)."""
    build = tmp_path_factory.mktemp("wheels")
    target = tmp_path_factory.mktemp("site")
    tiny = build_wheel(build, "setpoint-note-driver", "1.2.0", {"note_driver.py": TINY_DRIVER.encode()},
                       "[setpoint.drivers]\nnote = note_driver:NoteDriver\n")
    home_files = {f"setpoint_home/{p.name}": p.read_bytes() for p in (HOME / "setpoint_home").glob("*.py")}
    home = build_wheel(build, "setpoint-home-example", "0.1.0", home_files,
                       "[setpoint.drivers]\nhome-sim = setpoint_home.plugin:HomeDevicesDriver\n")
    pip_install(tiny, target)
    pip_install(home, target)
    return target


def test_setpoint_drivers_lists_what_is_installed(site: Path) -> None:
    proc = setpoint("drivers", "-o", "json", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"process", "rest", "note", "home-sim"} <= set(rows)
    assert rows["note"]["package"] == "setpoint-note-driver" and rows["note"]["version"] == "1.2.0"
    assert rows["note"]["description"] == "Keeps one note per object (a plugin test driver)."
    assert rows["home-sim"]["package"] == "setpoint-home-example"
    assert rows["process"]["package"] == "setpoint" and rows["process"]["object"].endswith(":ProcessDriver")
    table = setpoint("drivers", pythonpath=site)
    assert table.returncode == 0 and "setpoint-note-driver" in table.stdout and "home-sim" in table.stdout


def test_an_installed_plugin_is_usable(site: Path) -> None:
    code = """
import asyncio
from setpoint.drivers import plugins
from setpoint.drivers.base import OperationId

async def main():
    driver = plugins.create("note", prefix="> ")
    obj = {"metadata": {"uid": "u1", "generation": 1}, "spec": {"text": "hi"}}
    op = OperationId.for_object(obj, "ensure")
    for _ in range(2):  # observe-then-ensure twice: the second time there is nothing to do
        await driver.ensure(obj, await driver.observe(obj), op)
    print(driver.notes["u1"], driver.ops)

asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "> hi ['u1/1/ensure']"


def test_a_broken_plugin_is_listed_with_its_error(site: Path, tmp_path: Path) -> None:
    broken = build_wheel(tmp_path, "setpoint-broken-driver", "0.0.1", {"broken_driver.py": b"import nonexistent_mod\n"},
                         "[setpoint.drivers]\nbroken = broken_driver:Driver\n")
    target = tmp_path / "site"
    pip_install(broken, target)
    proc = setpoint("drivers", "-o", "json", pythonpath=target)
    assert proc.returncode == 1
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert "nonexistent_mod" in rows["broken"]["error"] and rows["rest"]["error"] == ""


def test_discovery_in_process() -> None:
    found = plugins.discover()
    assert found["process"].value == "setpoint.drivers.process:ProcessDriver"
    assert found["home-sim"].distribution == "setpoint-home-example"  # from the conftest's metadata
    with pytest.raises(plugins.PluginError, match=r"no driver named 'nope'.*home-sim"):
        plugins.load("nope")
    from setpoint.drivers.rest import RestDriver

    assert plugins.load("rest") is RestDriver
    assert str(OperationId("u", 2, "ensure")) == "u/2/ensure"
