"""The client, the namespace and discovery for one command; errors as one line and an exit code; the
options every command shares."""


from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from setpoint.cli.objects.common import CLIError, err_console, usage_error  # noqa: F401 - re-exported
from setpoint.cli.objects.discovery import Discovery
from setpoint.client import (
    APIStatusError,
    Client,
    ClientConfig,
    ClientError,
    ConfigError,
)

# ---- options shared by every command -----------------------------------------------------------

KubeconfigOpt = Annotated[str | None, typer.Option(
    "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, ./.setpoint/kubeconfig.yaml).",
    show_default=False)]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Kubeconfig context (default: current-context).",
                                                 show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Namespace (default: the context's namespace, else 'default').", show_default=False)]
AllNamespacesOpt = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Across all namespaces.")]
SelectorOpt = Annotated[str | None, typer.Option(
    "--selector", "-l", help="Label selector, e.g. 'tier=front,env!=dev'.", show_default=False)]
FieldSelectorOpt = Annotated[str | None, typer.Option(
    "--field-selector", help="Field selector, e.g. 'metadata.name=web'.", show_default=False)]
FilesOpt = Annotated[list[str] | None, typer.Option(
    "--filename", "-f", help="A YAML or JSON file, a directory of them, or '-' for stdin. Repeatable.",
    show_default=False)]


class Session:
    """The client, the namespace to use, and discovery, for one command."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            self.config = ClientConfig.from_kubeconfig(kubeconfig, context)
        except (ConfigError, OSError) as e:
            raise CLIError(f"kubeconfig: {e}") from None
        self.explicit_namespace = namespace
        self.namespace = namespace or self.config.namespace or "default"
        self.client = Client(self.config, warning_handler=_print_warning)
        self.discovery = Discovery(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()


def _print_warning(text: str) -> None:
    err_console.print(f"Warning: {text}", markup=False)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run an async command; turn every expected failure into a message and an exit code."""
    try:
        code = asyncio.run(main())
    except CLIError as e:
        err_console.print(f"error: {e.message}", markup=False)
        raise typer.Exit(e.code) from None
    except APIStatusError as e:
        err_console.print(f"error: {status_message(e)}", markup=False)
        raise typer.Exit(1) from None
    except ClientError as e:
        err_console.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # the reader went away (`setpoint watch … | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def status_message(e: APIStatusError) -> str:
    """The server's Status message, and each cause's field that the message does not already name."""
    text = f"{e.reason or e.code}: {e.message}" if e.message else f"{e.code} {e.reason}"
    extra = [f"  {c.field}: {c.message}" if c.field else f"  {c.message}"
             for c in e.causes if (c.field and c.field not in e.message) or (not c.field and c.message
                                                                               and c.message not in e.message)]
    return "\n".join([text, *extra])


def describe_error(e: BaseException) -> str:
    if isinstance(e, APIStatusError):
        return status_message(e)
    return str(e)


