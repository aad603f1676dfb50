"""The node agent: what runs on each host and makes desired state real there."""

from setpoint.node.agent import NodeAgent

__all__ = ["NodeAgent"]
