"""The hotel profile: name, rooms, rates, policies and facts, loaded from `data/hotel.yaml`."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, Field


class RoomTypeSpec(BaseModel):
    code: str
    name: str
    description: str
    capacity: int = Field(gt=0)
    count: int = Field(ge=0)
    nightly_rate: Decimal
    weekend_rate: Decimal | None = None


class HotelProfile(BaseModel):
    name: str
    address: str
    phone: str
    timezone: str
    currency: str = "USD"
    tax_rate: Decimal = Decimal("0")
    check_in_time: str
    check_out_time: str
    max_nights: int = 30
    booking_horizon_days: int = 365
    room_types: list[RoomTypeSpec]
    policies: dict[str, str] = {}
    facts: dict[str, str] = {}

    def room(self, code: str) -> RoomTypeSpec:
        for room in self.room_types:
            if room.code == code:
                return room
        raise KeyError(f"unknown room type {code!r}; known: {[r.code for r in self.room_types]}")

    @property
    def room_codes(self) -> list[str]:
        return [r.code for r in self.room_types]


def load_hotel(path: Path) -> HotelProfile:
    """Read and validate the hotel file; a malformed file fails here with pydantic's message."""
    with open(path, encoding="utf-8") as fh:
        return HotelProfile.model_validate(yaml.safe_load(fh))
