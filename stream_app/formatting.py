"""How every surface writes numbers, percentages, p-values, intervals, times and counts, and which
direction of a significant effect is an improvement: one module, so the dashboard, ``watch``,
``tail --table``, the report and the demo never disagree on a number's format."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

IMPROVEMENT, REGRESSION = "improvement", "regression"


def _number(value: Any) -> float | None:
    """A float for numbers (bools excluded), None otherwise; non-finite floats pass through."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def finite(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def is_relative(row: Mapping[str, Any]) -> bool:
    return row.get("effect", "relative") != "absolute"


def fmt_effect(value: Any, relative: bool = True) -> str:
    """Lift as a signed percentage (relative effects) or a signed number (absolute ones)."""
    number = _number(value)
    if number is None or math.isnan(number):
        return "n/a"
    if math.isinf(number):
        return "+inf" if number > 0 else "-inf"
    return f"{number * 100:+.2f}%" if relative else f"{number:+.4g}"


# A relative lift is a ratio minus one: it cannot be below -100%, but the always-valid interval of
# a noisy early look can reach past it. Such a bound is printed as -100.00% with this mark.
CLIP_MARK = "*"
CLIP_NOTE = "* interval clipped at -100%: a relative lift cannot be lower"


def clipped(lower: Any, relative: bool = True) -> bool:
    """Whether a relative interval's lower bound is below -100% (printed clipped, marked)."""
    lo = _number(lower)
    return relative and lo is not None and lo < -1.0


NOT_YET = "\u2014"  # no interval (or p) yet: the burn-in placeholder (-inf, inf) says nothing


def fmt_interval(lower: Any, upper: Any, relative: bool = True) -> str:
    lo, hi = _number(lower), _number(upper)
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    if lo == -math.inf and hi == math.inf:
        return NOT_YET
    low = f"{fmt_effect(-1.0)}{CLIP_MARK}" if clipped(lo, relative) else fmt_effect(lo, relative)
    return f"[{low}, {fmt_effect(hi, relative)}]"


def fmt_p(value: Any) -> str:
    p = _number(value)
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_significance(p_value: Any) -> str:
    """Statistical significance 1 - p as a percentage, Optimizely style (">99.00%" above 99%)."""
    p = _number(p_value)
    if p is None or math.isnan(p):
        return "n/a"
    significance = min(max(1.0 - p, 0.0), 1.0)
    return ">99.00%" if significance > 0.99 else f"{significance * 100:.2f}%"


def fmt_time(timestamp: Any, with_date: bool = True) -> str:
    ts = finite(timestamp)
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S", time.gmtime(ts))


def fmt_count(value: Any) -> str:
    number = finite(value)
    return "n/a" if number is None else f"{number:,.0f}"


def fmt_value(value: Any, binary: bool) -> str:
    """An arm's conversion rate (binary metrics, as a percentage) or mean (two decimals from 100
    on, four below)."""
    number = finite(value)
    if number is None:
        return "n/a"
    if binary:
        return f"{number * 100:.2f}%"
    return f"{number:,.2f}" if abs(number) >= 100 else f"{number:.4f}"


def metric_options(config: Mapping[str, Any] | None, metric: str) -> Mapping[str, Any]:
    metrics = (config or {}).get("metrics") or {}
    options = metrics.get(metric) if isinstance(metrics, Mapping) else None
    return options if isinstance(options, Mapping) else {}


def lower_is_better(config: Mapping[str, Any] | None, metric: str) -> bool:
    return metric_options(config, metric).get("lower_is_better") is True


def has_estimate(row: Mapping[str, Any]) -> bool:
    """False during burn-in (or while the lift is undefined): the engine then reports a
    placeholder lift of 0 with the interval (-inf, inf)."""
    lo, hi = _number(row.get("corrected_conf_interval_lower")), _number(row.get("corrected_conf_interval_upper"))
    return not (lo == -math.inf and hi == math.inf) and finite(row.get("lift_estimate")) is not None


def direction(row: Mapping[str, Any], lower_better: bool) -> str | None:
    """IMPROVEMENT or REGRESSION for a significant (rejected) row, None otherwise."""
    lift = finite(row.get("lift_estimate"))
    if row.get("rejected") is not True or lift is None or lift == 0:
        return None
    return IMPROVEMENT if (lift > 0) != lower_better else REGRESSION
