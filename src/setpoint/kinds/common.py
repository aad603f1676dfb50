"""What every kind of setpoint's own shares: the base class, conditions, common constraints."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.client.typed import Condition, Kind

NonEmpty = Annotated[str, Meta(min_length=1)]

__all__ = ["Condition", "Kind", "LabelSelector", "LabelSelectorRequirement", "NonEmpty"]


class LabelSelectorRequirement(msgspec.Struct, kw_only=True, omit_defaults=True):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | UnsetType = UNSET


class LabelSelector(msgspec.Struct, kw_only=True, omit_defaults=True):
    matchLabels: dict[str, str] | UnsetType = UNSET
    matchExpressions: list[LabelSelectorRequirement] | UnsetType = UNSET
