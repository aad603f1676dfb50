"""Files rendered from desired state, and a command run when one changes: ``setpoint template``
(consul-template's habits) and the ``Template`` kind that node agents run, on one engine."""

from setpoint.templates.engine import Engine, Outcome, TemplateConfig

__all__ = ["Engine", "Outcome", "TemplateConfig"]
