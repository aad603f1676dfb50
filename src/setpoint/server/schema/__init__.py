"""A CRD's structural schema applied to the objects of its kind, as kube-apiserver applies it:
pruned and defaulted (``shape``), then validated, a rejection explained field by field
(``errors``); ``compile`` turns a schema into the ``Validator`` that does all three, and
``formats`` holds the string formats both validation walks check.

The rest of the server needs only ``compile_schema`` and the ``Validator`` it returns.
"""

from setpoint.server.schema.compile import Validator, compile_schema

# The explaining walk, under the name tests/server/test_schema.py checks it by against the verdict.
from setpoint.server.schema.errors import Collector as _Collector  # noqa: F401

__all__ = ["Validator", "compile_schema"]
