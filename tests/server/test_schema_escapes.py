"""A pattern with backslashes (``\\d``, ``\\.``) compiles without Python warnings and checks what it
says: the compiled validator's generated source never holds the pattern as a string literal."""

from __future__ import annotations

import warnings

import pytest

from setpoint.server.errors import Invalid
from setpoint.server.schema import compile_schema

SCHEMA = {"type": "object", "properties": {"cidr": {"type": "string", "pattern": r"^\d+\.\d+\.\d+\.\d+/\d+$"},
                                           "quote": {"type": "string", "pattern": "^[^\"']*$"}}}


def test_backslashes_and_quotes_in_patterns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate = compile_schema(SCHEMA)
    assert validate({"cidr": "10.1.0.0/16", "quote": "plain"}, owned=True)["cidr"] == "10.1.0.0/16"
    for bad in ({"cidr": "10.1.0.0"}, {"cidr": "10x1.0.0/16"}, {"quote": "it's"}):
        with pytest.raises(Invalid):
            validate(bad, owned=True)
