"""A value with a trailing newline is not valid where the value without it is: Python's ``$``
also matches before a final newline, Kubernetes' (Go's) does not. Names, label keys and values,
schema formats and the NATS subject prefix are checked up to the very end."""

from __future__ import annotations

import pytest

from setpoint.server.objects import name_errors
from setpoint.server.schema.formats import FORMATS
from setpoint.server.selectors import label_key_errors, label_value_errors
from setpoint.transfer.subjects import Subjects
from tests.api.conftest_helpers import wpath
from tests.conftest import widget
from tests.servers import ServerProcess


@pytest.mark.parametrize("value", ["web", "example.com/app", "a"])
def test_label_keys_and_values_with_a_trailing_newline_are_refused(value: str) -> None:
    assert label_key_errors(value) == []
    assert label_key_errors(value + "\n")
    if "/" not in value:
        assert label_value_errors(value) == []
        assert label_value_errors(value + "\n")


@pytest.mark.parametrize("label", [True, False])
def test_names_with_a_trailing_newline_are_refused(label: bool) -> None:
    assert name_errors("web-1", label=label) is None
    assert name_errors("web-1\n", label=label) is not None


@pytest.mark.parametrize(("fmt", "value"), [
    ("date", "2026-12-06"),
    ("date-time", "2026-12-06T03:00:00Z"),
    ("uuid", "3dc462df-63f7-4148-b8c2-830d154c77f0"),
    ("uuid4", "3dc462df-63f7-4148-b8c2-830d154c77f0"),
    ("hostname", "web-1.example.com"),
    ("mac", "00:1a:2b:3c:4d:5e"),
])
def test_formats_with_a_trailing_newline_are_refused(fmt: str, value: str) -> None:
    assert FORMATS[fmt](value)
    assert not FORMATS[fmt](value + "\n")


def test_a_subject_prefix_with_a_trailing_newline_is_refused() -> None:
    Subjects("setpoint")
    with pytest.raises(ValueError):
        Subjects("setpoint\n")


def test_the_api_refuses_such_names_and_labels_and_keeps_nothing(server: ServerProcess, namespace: str) -> None:
    with server.sync_client() as c:
        for body, field in ((widget("bad\n"), "metadata.name"),
                            (widget("bad", labels={"app": "web\n"}), "metadata.labels")):
            r = c.post(wpath(namespace), json=body)
            assert r.status_code == 422, r.text
            assert any(cause["field"] == field for cause in r.json()["details"]["causes"]), r.text
        assert c.get(wpath(namespace)).json()["items"] == []
