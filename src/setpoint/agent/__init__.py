"""The agent SDK: informer, work queue, controllers (reconcilers), leader election, status."""

from setpoint.agent.alerts import Alert, AlertSink, LogAlertSink, MemoryAlertSink
from setpoint.agent.cache import object_key, split_key
from setpoint.agent.conditions import get_condition, is_converged, set_condition
from setpoint.agent.controller import Controller, Result, TypedController, Watch, owner_mapper
from setpoint.agent.errors import NotReady, OperationId, Permanent, Transient
from setpoint.agent.events import EventRecorder
from setpoint.agent.informer import Informer
from setpoint.agent.leaderelection import LeaderElector
from setpoint.agent.workqueue import WorkQueue

__all__ = [
    "Alert",
    "AlertSink",
    "Controller",
    "EventRecorder",
    "Informer",
    "LeaderElector",
    "LogAlertSink",
    "MemoryAlertSink",
    "NotReady",
    "OperationId",
    "Permanent",
    "Result",
    "Transient",
    "TypedController",
    "Watch",
    "WorkQueue",
    "get_condition",
    "is_converged",
    "object_key",
    "owner_mapper",
    "set_condition",
    "split_key",
]
