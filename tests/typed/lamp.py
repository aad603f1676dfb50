"""A kind declared as a class, for the tests of setpoint.crdgen."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from setpoint.client.typed import Condition, Kind
from setpoint.crdgen import KindInfo


class LampSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the lamp should do."""

    brightness: Annotated[int, msgspec.Meta(ge=0, le=100, description="Percent of full light.")] = 50
    color: Literal["red", "white", "blue"] = "white"
    # May be absent: UNSET (not sent), or None (removed when written back).
    room: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*$")] | msgspec.UnsetType | None = msgspec.UNSET
    schedule: list[Annotated[str, msgspec.Meta(min_length=1)]] = []


class LampStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the lamp does."""

    on: bool = False
    observedGeneration: int | msgspec.UnsetType = msgspec.UNSET
    conditions: list[Condition] | msgspec.UnsetType = msgspec.UNSET


class Lamp(Kind, kw_only=True, omit_defaults=True):
    """A lamp in a home, switched by its agent."""

    kind_info: ClassVar[KindInfo] = KindInfo(group="home.example.com", version="v1", short_names=("lmp",),
                                             printer_columns=(("Brightness", "integer", ".spec.brightness"),))
    spec: LampSpec
    status: LampStatus | msgspec.UnsetType = msgspec.UNSET
