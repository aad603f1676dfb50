"""Driver plugins: drivers found through Python entry points, so that a driver is a package you
``pip install`` and use without changing setpoint.

A package declares its drivers in the ``setpoint.drivers`` entry-point group; each entry names a
driver class (or any factory returning a driver)::

    [project.entry-points."setpoint.drivers"]
    kettle = "acme_kettle.driver:KettleDriver"

:func:`discover` lists what is installed without importing anything; :func:`load` imports one;
:func:`create` imports and calls it with the options given. ``setpoint drivers`` prints the list.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

GROUP = "setpoint.drivers"

__all__ = ["GROUP", "DriverPlugin", "PluginError", "create", "describe", "discover", "load"]


class PluginError(LookupError):
    """No driver of that name is installed, or it could not be loaded."""


@dataclass(frozen=True, slots=True)
class DriverPlugin:
    name: str
    value: str  # "module:attribute"
    distribution: str  # the package that installed it ("" if unknown)
    version: str
    entry_point: md.EntryPoint

    def load(self) -> Callable[..., Any]:
        try:
            factory = self.entry_point.load()
        except Exception as e:  # an ImportError, or anything the module raises on import
            raise PluginError(f"driver {self.name!r} ({self.value}, from {self.distribution or '?'}) "
                              f"failed to load: {type(e).__name__}: {e}") from e
        if not callable(factory):
            raise PluginError(f"driver {self.name!r} ({self.value}) is not callable")
        return factory  # type: ignore[no-any-return]


def discover() -> dict[str, DriverPlugin]:
    """Installed driver plugins by name, read from package metadata (nothing is imported). When two
    packages register the same name, the first one on ``sys.path`` wins and a warning is logged."""
    found: dict[str, DriverPlugin] = {}
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        plugin = DriverPlugin(ep.name, ep.value, dist.name if dist else "", dist.version if dist else "", ep)
        if ep.name in found:
            if found[ep.name].value != ep.value:
                log.warning("driver %r registered twice: %s (%s) is used, %s (%s) is ignored", ep.name,
                            found[ep.name].value, found[ep.name].distribution, ep.value, plugin.distribution)
            continue
        found[ep.name] = plugin
    return dict(sorted(found.items()))


def load(name: str) -> Callable[..., Any]:
    """The driver class (or factory) registered as ``name``."""
    plugins = discover()
    try:
        plugin = plugins[name]
    except KeyError:
        known = ", ".join(plugins) or "none"
        raise PluginError(f"no driver named {name!r} is installed (installed: {known})") from None
    return plugin.load()


def create(name: str, /, **options: Any) -> Any:
    """Load the driver ``name`` and build it with ``options``."""
    return load(name)(**options)


def describe(plugin: DriverPlugin) -> dict[str, str]:
    """What ``setpoint drivers`` shows: name, where from, and the first line of its docstring (or
    why it cannot be loaded: a broken plugin is listed, not hidden)."""
    row = {"name": plugin.name, "object": plugin.value, "package": plugin.distribution,
           "version": plugin.version, "description": "", "error": ""}
    try:
        factory = plugin.load()
    except PluginError as e:
        row["error"] = str(e.__cause__ or e)
        return row
    doc = inspect.getdoc(factory) or ""
    row["description"] = doc.strip().splitlines()[0] if doc.strip() else ""
    return row
