"""One interval's observation of one arm, validated (METHODS.md section 1).

``parse_observation`` is the single gate for untrusted input, used by the batch call and by the
stream's adapters alike: it returns an immutable :class:`Observation` or raises
:class:`~state.errors.InvalidInput` naming the field and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
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


# Building an Observation without its frozen dataclass __init__, which sets each field through
# object.__setattr__ (a lookup by name and a call per field): the slots' own setters store the
# same values, so the instance is exactly the one Observation(...) makes, at about half the cost.
# Unpacking every field of the class keeps this in step with it (a new field fails the import).
_new_object = object.__new__
(_set_metric, _set_variation_id, _set_interval_timestamp, _set_unit_count, _set_unit_observation_sum,
 _set_unit_observation_sum_of_squares) = (getattr(Observation, f.name).__set__ for f in fields(Observation))


def _common_row(data: Any, metric: str | None, is_binary: bool) -> Observation | None:
    """The Observation of a common, valid row, else None for parse_observation's careful path.

    The stream runs this once per observation, so it is the careful path's checks inlined for the
    usual input - a dict (as orjson makes), string identifiers, int or float numbers - using
    exact types. It only ever accepts: each check is stated as what a valid row satisfies, so
    anything unusual or invalid (a missing field, a bool, a numpy number, an int beyond float
    range, NaN, which fails every comparison) returns None, and the careful path alone decides
    and words the error. Acceptance here implies acceptance there, with the same values.
    """
    if type(data) is not dict:
        return None
    name = data.get("metric") if metric is None else metric
    variation = data.get("variation_id")
    t = data.get("interval_timestamp")  # a missing field is None, which fails the type checks
    n = data.get("unit_count")
    s = data.get("unit_observation_sum")
    q = data.get("unit_observation_sum_of_squares")
    if not ((metric is not None or type(name) is str and name) and type(variation) is str and variation
            and type(t) in _NUMBER_TYPES and type(n) in _NUMBER_TYPES and type(s) in _NUMBER_TYPES
            and type(q) in _NUMBER_TYPES):
        return None
    try:
        t, n, s, q = float(t), float(n), float(s), float(q)
    except OverflowError:
        return None
    # validate_numbers' conditions for n (which also make it finite) and q >= 0; t, s and q are
    # finite when their sum is (an infinity or NaN makes the sum one; an overflowing sum of finite
    # numbers just takes the careful path).
    if not (0.0 < n <= MAX_EXACT_COUNT and n % 1.0 == 0.0 and q >= 0.0 and (t + s + q) * 0.0 == 0.0):
        return None
    mean_square = q / n  # validate_numbers' remaining tests, verbatim
    mean = s / n
    if mean_square - mean * mean < -VARIANCE_ROUNDING * mean_square or is_binary and not 0 <= s <= n:
        return None
    obs = _new_object(Observation)
    _set_metric(obs, name)
    _set_variation_id(obs, variation)
    _set_interval_timestamp(obs, t)
    _set_unit_count(obs, n)
    _set_unit_observation_sum(obs, s)
    _set_unit_observation_sum_of_squares(obs, q)
    return obs


def parse_observation(
    data: Mapping[str, Any], *, metric: str | None = None, is_binary: bool = False
) -> Observation:
    """Validate one row (a mapping with the input columns) into an :class:`Observation`.

    ``metric`` overrides the row's ``metric`` field (the batch call groups rows by metric).
    """
    obs = _common_row(data, metric, is_binary)
    if obs is not None:
        return obs
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
