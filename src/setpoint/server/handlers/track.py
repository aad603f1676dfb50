"""Field ownership of writes that are not applies: who changed which fields (managedFields)."""

from __future__ import annotations

from typing import Any

from setpoint.server import managedfields
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType


def track(rtype: ResourceType, info: RequestInfo, opts: WriteOptions, old: dict[str, Any] | None,
          new: dict[str, Any]) -> None:
    """Record who changed which fields, for writes that are tracked (see managedfields.py)."""
    if opts.apply:
        return
    old_managed = old["metadata"].get("managedFields") if old is not None else None
    if not opts.field_manager and not old_managed:
        return
    new_managed = new["metadata"].get("managedFields")
    if old is not None and new_managed != old_managed:
        # The client rewrote managedFields itself (to reset or migrate them): keep its version.
        if new_managed in ([], [{}]):
            new["metadata"].pop("managedFields", None)
        return
    manager = opts.field_manager or managedfields.manager_from_user_agent(opts.user_agent)
    schema = rtype.schemas.get(info.version) or rtype.schemas.get(rtype.storage_version)
    managedfields.track_update(old, new, manager, rtype.api_version(info.version), schema,
                               info.subresource, rtype.status_subresource)
