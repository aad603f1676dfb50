"""What every module of the object commands shares: errors as one line and an exit code, and the
server's fixed names."""

from __future__ import annotations

from rich.console import Console

from setpoint.client import Resource

err_console = Console(stderr=True, soft_wrap=True, highlight=False)

CRD_GROUP = "apiextensions.k8s.io"
CRD_RESOURCE = Resource(CRD_GROUP, "v1", "customresourcedefinitions", namespaced=False,
                        kind="CustomResourceDefinition")
# Kinds the server itself defines: they have no agent, so no convergence contract.
BUILTIN_GROUPS = frozenset({"", CRD_GROUP, "coordination.k8s.io", "discovery.k8s.io"})
# Metadata the server sets; never sent by apply.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "managedFields", "selfLink")
CRD_SERVED_DEADLINE = 30.0  # seconds to wait for a new CRD's kind to appear in discovery
WATCH_IDLE_TIMEOUT = 30.0  # the server sends a bookmark every 5 s; silence this long is a dead stream


class CLIError(Exception):
    """A failure to report in one line and exit with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage_error(message: str) -> CLIError:
    return CLIError(message, 2)
