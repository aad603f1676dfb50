"""Southbound tests: the home example's package is importable, and installed as a plugin.

``examples/home`` goes on ``sys.path``; its ``home-sim`` driver is made discoverable through
entry points by a distribution's metadata (a ``.dist-info`` directory) on ``sys.path``, as pip
would leave it. ``test_plugins.py`` does real ``pip install``s as well.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HOME = Path(__file__).resolve().parents[2] / "examples" / "home"
if str(HOME) not in sys.path:
    sys.path.insert(0, str(HOME))


@pytest.fixture(scope="session", autouse=True)
def home_plugin_metadata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = tmp_path_factory.mktemp("site")
    dist = site / "setpoint_home_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: setpoint-home-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        '[setpoint.drivers]\nhome-sim = setpoint_home.plugin:HomeDevicesDriver\n')
    sys.path.append(str(site))
    yield site
    sys.path.remove(str(site))
