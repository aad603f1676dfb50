"""Stacks (group setpoint.dev): a Stack whose resources refer to nothing or to each other in a
cycle is refused at create and update (422 naming the resources involved), not discovered by the
controller later."""

from __future__ import annotations

from typing import Any

from setpoint.server.objects import raise_invalid
from setpoint.server.strategies.base import CRD_STRATEGIES, Strategy
from setpoint.stackgraph import StackError, build


class StackStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> Any:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            try:
                build(spec)
            except StackError as e:
                raise_invalid("Stack", "setpoint.dev", str(obj["metadata"].get("name", "")),
                              [("FieldValueInvalid", f"Invalid value: {e.message}", e.path)])
        return None


CRD_STRATEGIES[("setpoint.dev", "stacks")] = StackStrategy()
