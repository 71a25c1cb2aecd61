"""One interval's observation of one arm, validated (METHODS.md section 1).

``parse_observation`` is the single gate for untrusted input, used by the batch call and by the
stream's adapters alike: it returns an immutable :class:`Observation` or raises
:class:`~state.errors.InvalidInput` naming the field and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from .arms import VARIANCE_ROUNDING
from .errors import InvalidInput

# Beyond this, float64 sums stop being exact for counts (METHODS.md section 1).
MAX_EXACT_COUNT = 2.0**53


@dataclass(frozen=True, slots=True)
class Observation:
    metric: str
    variation_id: str
    interval_timestamp: float
    unit_count: float
    unit_observation_sum: float
    unit_observation_sum_of_squares: float

    def same_numbers(self, other: "Observation") -> bool:
        return (
            self.unit_count == other.unit_count
            and self.unit_observation_sum == other.unit_observation_sum
            and self.unit_observation_sum_of_squares == other.unit_observation_sum_of_squares
        )


def parse_timestamp(value: Any, field: str = "interval_timestamp") -> float:
    """Unix seconds (int or float) or an ISO-8601 string with a time zone -> float seconds."""
    if type(value) in _NUMBER_TYPES:
        return _finite_float(value, field)
    if isinstance(value, bool):
        raise InvalidInput(f"must be unix seconds or an ISO-8601 time with zone, got {value!r}", field=field)
    if isinstance(value, (int, float)):  # numeric subclasses, e.g. numpy
        return _finite_float(value, field)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"is not an ISO-8601 time: {value!r}", field=field) from None
        if parsed.tzinfo is None:
            raise InvalidInput(f"ISO-8601 time needs a zone (e.g. 'Z' or '+00:00'): {value!r}", field=field)
        return parsed.astimezone(timezone.utc).timestamp()
    raise InvalidInput(f"must be unix seconds or an ISO-8601 time with zone, got {type(value).__name__}", field=field)


_NUMBER_TYPES = (int, float)  # exact types: bool is an int subclass and is refused


def _finite_float(value: int | float, field: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise InvalidInput(f"is out of range: {value!r}", field=field) from None
    if number - number == 0.0:  # finite (inf - inf and nan - nan are nan)
        return number
    raise InvalidInput(f"must be finite, got {number!r}", field=field)


def _number(data: Mapping[str, Any], field: str) -> float:
    value = data.get(field, _MISSING)
    if type(value) in _NUMBER_TYPES:
        return _finite_float(value, field)
    if value is _MISSING:
        raise InvalidInput("is missing", field=field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # numeric subclasses, e.g. numpy
        return _finite_float(value, field)
    raise InvalidInput(f"must be a number, got {type(value).__name__} {value!r}", field=field)


_MISSING = object()


def _identifier(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if type(value) is str and value:
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InvalidInput(f"must be a non-empty string, got {value!r}", field=field)
    return str(value)


def validate_numbers(n: float, s: float, q: float, is_binary: bool = False) -> None:
    """Reject counts and sums no real data can produce."""
    if n < 0 or n != math.floor(n):
        raise InvalidInput(f"must be a whole number >= 0, got {n!r}", field="unit_count")
    if n > MAX_EXACT_COUNT:
        raise InvalidInput(f"exceeds 2**53, where counts stop being exact, got {n!r}", field="unit_count")
    if q < 0:
        raise InvalidInput(f"must be >= 0, got {q!r}", field="unit_observation_sum_of_squares")
    if n == 0:
        if s != 0 or q != 0:
            raise InvalidInput("unit_count is 0 but the sums are not: no units, no observations", field="unit_count")
        return
    # Section 1: v = Q/N - m^2 below -1e-9 * Q/N is impossible (Cauchy-Schwarz: S^2 <= N Q).
    mean_square = q / n
    mean = s / n
    if mean_square - mean * mean < -VARIANCE_ROUNDING * mean_square:
        raise InvalidInput(
            f"sum of squares {q!r} is smaller than sum^2 / unit_count = {s * s / n!r}: negative variance",
            field="unit_observation_sum_of_squares",
        )
    if is_binary and not 0 <= s <= n:
        raise InvalidInput(f"a 0/1 metric needs 0 <= sum <= unit_count, got sum {s!r} for {n!r} units", field="unit_observation_sum")


def parse_observation(
    data: Mapping[str, Any], *, metric: str | None = None, is_binary: bool = False
) -> Observation:
    """Validate one row (a mapping with the input columns) into an :class:`Observation`.

    ``metric`` overrides the row's ``metric`` field (the batch call groups rows by metric).
    """
    if not isinstance(data, Mapping):
        raise InvalidInput(f"an observation must be an object, got {type(data).__name__}")
    name = metric if metric is not None else _identifier(data, "metric")
    variation = _identifier(data, "variation_id")
    if "interval_timestamp" not in data:
        raise InvalidInput("is missing", field="interval_timestamp")
    timestamp = parse_timestamp(data["interval_timestamp"])
    n = _number(data, "unit_count")
    s = _number(data, "unit_observation_sum")
    q = _number(data, "unit_observation_sum_of_squares")
    validate_numbers(n, s, q, is_binary)
    return Observation(name, variation, timestamp, n, s, q)
