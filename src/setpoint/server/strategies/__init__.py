"""Per-kind behaviour of writes, as kube-apiserver's ``RESTCreateStrategy`` and
``RESTUpdateStrategy`` give it: the verbs (``server/handlers/``) are the same for every kind, and
what a kind adds (defaults on create, fields kept on update, extra validation, what its deletion
waits for, what follows a write) is a ``Strategy`` on its ``ResourceType``.
"""

from setpoint.server.strategies import stack as _stack  # noqa: F401 - registers the Stack strategy
from setpoint.server.strategies.base import CRD_STRATEGIES, DEFAULT, Strategy

__all__ = ["CRD_STRATEGIES", "DEFAULT", "Strategy"]
