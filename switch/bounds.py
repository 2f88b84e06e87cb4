"""Bounded numeric types shared by every config section (msgspec checks them on load)."""

from __future__ import annotations

from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
