"""Object uids are RFC 4122 version 4 UUIDs, all distinct."""

import uuid

from setpoint.server.objects import new_uid


def test_new_uid_is_a_version_4_uuid_and_unique() -> None:
    uids = [new_uid() for _ in range(5000)]
    assert len(set(uids)) == len(uids)
    for u in uids:
        parsed = uuid.UUID(u)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == u
