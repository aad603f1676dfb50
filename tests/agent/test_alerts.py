"""Alert sinks: the log sink writes one ERROR line naming the object; fan-out survives a bad sink."""

from __future__ import annotations

import logging

import pytest

from setpoint.agent.alerts import Alert, FanOutAlertSink, LogAlertSink, MemoryAlertSink

ALERT = Alert(controller="homes", kind="Home", namespace="default", name="villa", uid="u1",
              reason="RetryBudgetExhausted", message="kettle unreachable", error_class="Transient", attempts=5)


def test_log_sink_writes_an_error_naming_the_object(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="setpoint.alerts"):
        LogAlertSink().alert(ALERT)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    text = record.getMessage()
    assert "Home default/villa" in text and "RetryBudgetExhausted" in text and "5 attempts" in text


def test_fan_out_reaches_every_sink_even_after_a_failing_one() -> None:
    class Broken:
        def alert(self, alert: Alert) -> None:
            raise RuntimeError("down")

    memory = MemoryAlertSink()
    FanOutAlertSink(Broken(), memory).alert(ALERT)
    assert list(memory.alerts) == [ALERT]
