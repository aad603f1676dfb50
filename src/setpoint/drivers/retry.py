"""Retry policies, as drivers declare them: defined with the runtime that applies them
(:mod:`setpoint.agent.retry`) and importable from here, where a driver's author looks first."""

from setpoint.agent.retry import Backoff, Decision, RetryPolicy, RetryTracker

__all__ = ["Backoff", "Decision", "RetryPolicy", "RetryTracker"]
