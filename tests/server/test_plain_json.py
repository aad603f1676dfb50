"""The create path skips the walk over a body's values when a look at its bytes proves the walk
would find nothing; the look must never pass a body the walk would refuse."""

from __future__ import annotations

import pytest

from setpoint.server.objects import MAX_DEPTH, plain_json


@pytest.mark.parametrize(("body", "plain"), [
    (b'{"metadata":{"name":"a"},"spec":{"n":123456789012345678}}', True),  # 18 digits
    (b'{"metadata":{"name":"a"},"spec":{"n":1234567890123456789}}', False),  # 19: may be past int64
    (b'{"spec":{"n":-99999999999999999999}}', False),
    (b'{"spec":{"s":"a1234567890123456789b"}}', False),  # in a string too: the look is conservative
    (b'{"spec":{"n":1.5e300,"m":1234567890,"k":123456789}}', True),
    (b"{" * MAX_DEPTH + b"}" * MAX_DEPTH, True),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), False),
])
def test_the_look_at_the_bytes(body: bytes, plain: bool) -> None:
    assert plain_json(body) is plain
