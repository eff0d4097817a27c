"""Numeric ranges as types: `Annotated[int, Range(min=1)]`, so a dataclass field says what it accepts.

Any layer's option dataclasses (the pyramid's `PyramidConfig`, the training objectives' options) annotate
their fields with these; `training.config` checks every value against them when a config loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pyramidal_wan.errors import InputError


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric field, attached with `Annotated[int, Range(min=1)]`."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself excluded
    max_open: bool = False

    def check(self, value, name: str) -> None:
        low = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high = self.max is None or (value < self.max if self.max_open else value <= self.max)
        if not (low and high):
            lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
            raise InputError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}")


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
Positive = Annotated[float, Range(min=0, min_open=True)]
NonNegative = Annotated[float, Range(min=0)]
Probability = Annotated[float, Range(min=0, max=1)]
Decay = Annotated[float, Range(min=0, max=1, max_open=True)]  # EMA and Adam betas: 1 would never move
