"""What travels with a request beside its URL: who asks, and how a write is to be done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from setpoint.server.errors import BadRequest

FIELD_VALIDATIONS = ("Ignore", "Warn", "Strict")


@dataclass(slots=True)
class WriteOptions:
    """One write's options, read once from the query and headers, and the warnings it collects
    for the response (``Warning: 299`` headers)."""

    user: Any = None  # the authenticated user, or None without authentication
    dry_run: bool = False
    field_validation: str = ""  # Ignore, Warn or Strict ("" when not given)
    field_manager: str = ""  # fieldManager, or one derived from the User-Agent where needed
    user_agent: str = ""  # for the default field manager of tracked writes
    apply: bool = False  # a server-side apply: it sets managedFields itself
    warnings: list[str] = field(default_factory=list)


def write_options(request: Any, user: Any, verb: str) -> WriteOptions:
    """The options of a write. The query and headers are parsed only when there is something to
    read in them: most writes have no query string, and every write comes through here."""
    opts = WriteOptions(user=user)
    if request.scope["query_string"]:
        query = request.query_params
        for v in query.getlist("dryRun"):
            if v != "All":
                raise BadRequest(f'Invalid dryRun value "{v}": the only supported value is "All"')
            opts.dry_run = True
        if verb in ("create", "update", "patch"):
            fv = query.get("fieldValidation")
            if fv:
                if fv not in FIELD_VALIDATIONS:
                    raise BadRequest(f'fieldValidation "{fv}" is invalid: must be one of Ignore, Warn or Strict')
                opts.field_validation = fv
            opts.field_manager = query.get("fieldManager", "")
    if verb in ("update", "patch"):
        opts.user_agent = request.headers.get("user-agent", "")
    return opts
