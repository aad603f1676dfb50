"""The strategy every kind starts from: nothing beyond the verbs' own rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setpoint.server.resources import Registry, ResourceType
    from setpoint.server.watchcache import WatchCache


class Strategy:
    """Hooks a kind may override. Each is called at one point of a write, in this order:
    ``prepare_create`` or ``prepare_update`` (defaults, fields a client may not set), then
    ``validate`` after the schema (its result reaches ``after_write``, so what it derives is
    worked out once per write), then ``after_write`` once the store has the change."""

    # Whether a create keeps the status sent with it although the kind has a status subresource
    # (a Namespace is created Active).
    keeps_status_on_create = False

    def prepare_create(self, obj: dict[str, Any]) -> None:
        """Defaults and derived fields of a new object, before validation."""

    def prepare_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Defaults and derived fields of a changed object, before validation."""

    def validate(self, obj: dict[str, Any]) -> Any:
        """Rules beyond the schema; raises ``Invalid`` naming the field. What it returns is
        handed to ``after_write``."""
        return None

    def after_write(self, registry: Registry, event: str, obj: dict[str, Any], derived: Any) -> None:
        """What follows a stored change (``ADDED``, ``MODIFIED`` or ``DELETED``) on this server,
        before the response; ``derived`` is what ``validate`` returned (None for deletions)."""

    def deletion_finalizers(self, obj: dict[str, Any]) -> list[str]:
        """Finalizers a deletion waits for besides ``metadata.finalizers``."""
        return []

    def mark_terminating(self, obj: dict[str, Any]) -> None:
        """Changes to an object whose deletion has begun and must wait."""

    def node_may_get(self, cache: WatchCache, rtype: ResourceType, node: str, namespace: str,
                     name: str) -> bool | None:
        """Whether a node's credentials may read this object: None leaves it to the node
        authorizer's general rule (objects assigned to the node)."""
        return None


DEFAULT = Strategy()

# setpoint's own kinds are CRDs; those with rules beyond their schema register a strategy here
# (by group and plural), which the type built from the CRD then carries.
CRD_STRATEGIES: dict[tuple[str, str], Strategy] = {}
