"""``setpoint apply``, ``get``, ``delete`` and ``watch``: drive setpoint without kubectl.

Every command reads a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``, else ``./.setpoint/kubeconfig.yaml``), resolves kinds through the server's
discovery documents and talks to the API with the async client.

How ``apply`` updates an object that exists: it sends a JSON merge patch (RFC 7386) made of the
fields in the file (server-set metadata such as ``resourceVersion`` and ``uid`` removed). Fields
in the file win; fields the file does not mention are left alone, so removing a field from the
file does not remove it from the object (write ``field: null`` to remove it). There is no
last-applied annotation. The result is ``unchanged`` when the patch would change nothing (or the
server's resourceVersion did not move), else ``configured``.

Exit codes: 0 everything worked; 1 an object (or the connection, or the kubeconfig) failed,
after every object was tried; 2 the command line or its input files are wrong (nothing was sent).
"""

# Importing a command's module registers the command on the app.
from setpoint.cli.objects import apply, delete, get, watch
from setpoint.cli.objects.follow import following
from setpoint.cli.objects.output import jsonpath
from setpoint.server.patch import merge_patch

__all__ = ["apply", "delete", "following", "get", "jsonpath", "merge_patch", "watch"]
