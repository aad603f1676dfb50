"""The ``setpoint`` command: one typer app, one module per group of commands."""

from setpoint.cli import agent as _agent  # noqa: F401  (registers its commands)
from setpoint.cli import codegen as _codegen  # noqa: F401
from setpoint.cli import crd as _crd  # noqa: F401
from setpoint.cli import dev as _dev  # noqa: F401
from setpoint.cli import drivers as _drivers  # noqa: F401
from setpoint.cli import objects as _objects  # noqa: F401
from setpoint.cli import reap as _reap  # noqa: F401
from setpoint.cli import serve as _serve  # noqa: F401
from setpoint.cli import stack as _stack  # noqa: F401
from setpoint.cli import template as _template  # noqa: F401
from setpoint.cli.app import app, console, main

__all__ = ["app", "console", "main"]
