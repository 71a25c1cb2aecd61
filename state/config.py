"""Engine and metric configuration with the defaults of METHODS.md.

Both are frozen value objects built from plain dicts (the batch request's ``config`` blocks and
the stream's experiment-config records) by ``from_dict``, which rejects unknown keys and
out-of-range values with :class:`~state.errors.InvalidInput` so that a typo never silently falls
back to a default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .errors import InvalidInput

EFFECTS = ("relative", "absolute")
# "fieller" (the native default, state/METHODS.md): test on the difference scale, relative
# interval by Fieller inversion of the same test. "ses" reproduces the reference service and
# "delta" (with n_star) gbstats; both evaluate the lift's variance at the observed ratio, which
# METHODS.md section 10 shows is not valid on skewed and rare metrics.
VARIANCE_METHODS = ("fieller", "ses", "delta")
DEFAULT_VARIANCE_METHOD = "fieller"
# The reference service's batch call (state.evaluate) keeps the reference service's method when a
# request names none, so that the reference request returns the reference numbers (section 10).
BATCH_VARIANCE_METHOD = "ses"


def _check_keys(cls, data: Mapping[str, Any], where: str) -> None:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{where} must be an object, got {type(data).__name__}", field=where)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(
            f"unknown option(s) {', '.join(map(repr, unknown))}; known options are {', '.join(sorted(known))}",
            field=where,
        )


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise InvalidInput(f"must be a number strictly between 0 and 1, got {value!r}", field=name)
    return float(value)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise InvalidInput(f"must be a finite number > 0, got {value!r}", field=name)
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"must be true or false, got {value!r}", field=name)
    return value


def _ddof(name: str, value: Any) -> int:
    if value not in (0, 1) or isinstance(value, bool):
        raise InvalidInput(f"must be 0 (population) or 1 (sample), got {value!r}", field=name)
    return int(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidInput(f"must be one of {', '.join(choices)}, got {value!r}", field=name)
    return value


@dataclass(frozen=True, slots=True)
class MetricConfig:
    """Per-metric options. ``effect=None`` inherits the engine's effect.

    ``variance_ddof`` (None, 0 or 1) is this metric's variance convention: None means the
    population form p(1 - p) for a 0/1 metric and the engine's ``variance_ddof`` for any other, so
    one experiment can mix gbstats' conventions (binomial p(1 - p), continuous n - 1).
    """

    name: str | None = None
    is_binary: bool = False
    effect: str | None = None
    in_fdr_family: bool = True
    lower_is_better: bool = False
    variance_ddof: int | None = None

    def ddof(self, engine_ddof: int) -> int:
        """The ddof this metric's variances use under an engine whose default is ``engine_ddof``."""
        if self.variance_ddof is not None:
            return self.variance_ddof
        return 0 if self.is_binary else engine_ddof

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "MetricConfig":
        data = {} if data is None else data
        _check_keys(cls, data, "metric config")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidInput(f"must be a non-empty string, got {name!r}", field="name")
        effect = data.get("effect")
        ddof = data.get("variance_ddof")
        return cls(
            name=name,
            is_binary=_flag("is_binary", data.get("is_binary", False)),
            effect=None if effect is None else _choice("effect", effect, EFFECTS),
            in_fdr_family=_flag("in_fdr_family", data.get("in_fdr_family", True)),
            lower_is_better=_flag("lower_is_better", data.get("lower_is_better", False)),
            variance_ddof=None if ddof is None else _ddof("variance_ddof", ddof),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Experiment-level options (METHODS.md defaults).

    ``n_star`` switches the mixing distribution to the scale-free parameterisation of METHODS.md
    section 4 (GrowthBook-style); otherwise ``tau2`` is the mixing variance. ``variance_method``
    is "fieller" (the native default, state/METHODS.md), "ses" or "delta" (compatibility modes).
    ``variance_ddof`` is the default variance convention of non-binary metrics: 1 uses sample
    variances (n - 1), as gbstats does for continuous metrics; 0 is the population form the
    reference service reports. 0/1 metrics use the population form p(1 - p) whatever this says,
    as gbstats does, unless their own MetricConfig.variance_ddof says otherwise. ``weights``
    maps variation id to its intended allocation (any positive
    scale; missing variations get weight 0 once weights are given, equal split when None).
    """

    reference_variation_id: str = "control"
    use_stats_resets: bool = True
    alpha: float = 0.1
    tau2: float = 0.01
    n_star: float | None = None
    min_units: int = 100
    effect: str = "relative"
    variance_method: str = DEFAULT_VARIANCE_METHOD
    variance_ddof: int = 0
    reset_alpha: float = 0.01
    srm_concentration: float = 100.0
    srm_alpha: float = 0.001
    srm_confidence_level: float = 0.999
    weights: Mapping[str, float] | None = field(default=None)

    def __post_init__(self):
        # One canonical form (str -> float) however the object was built, so configs compare
        # and serialise identically.
        if self.weights is not None:
            object.__setattr__(self, "weights", _weights(self.weights))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "EngineConfig":
        data = {} if data is None else data
        _check_keys(cls, data, "config")
        ref = data.get("reference_variation_id", "control")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput(f"must be a non-empty string, got {ref!r}", field="reference_variation_id")
        min_units = data.get("min_units", 100)
        if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 0:
            raise InvalidInput(f"must be a whole number >= 0, got {min_units!r}", field="min_units")
        ddof = _ddof("variance_ddof", data.get("variance_ddof", 0))
        n_star = data.get("n_star")
        return cls(
            reference_variation_id=ref,
            use_stats_resets=_flag("use_stats_resets", data.get("use_stats_resets", True)),
            alpha=_probability("alpha", data.get("alpha", 0.1)),
            tau2=_positive("tau2", data.get("tau2", 0.01)),
            n_star=None if n_star is None else _positive("n_star", n_star),
            min_units=min_units,
            effect=_choice("effect", data.get("effect", "relative"), EFFECTS),
            variance_method=_choice("variance_method", data.get("variance_method", DEFAULT_VARIANCE_METHOD),
                                    VARIANCE_METHODS),
            variance_ddof=ddof,
            reset_alpha=_probability("reset_alpha", data.get("reset_alpha", 0.01)),
            srm_concentration=_positive("srm_concentration", data.get("srm_concentration", 100.0)),
            srm_alpha=_probability("srm_alpha", data.get("srm_alpha", 0.001)),
            srm_confidence_level=_probability("srm_confidence_level", data.get("srm_confidence_level", 0.999)),
            weights=data.get("weights"),  # canonicalised and checked by __post_init__
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = None if self.weights is None else dict(self.weights)
        return out


def _weights(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise InvalidInput("must be an object mapping variation id to weight", field="weights")
    out: dict[str, float] = {}
    for key, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight >= 0 and math.isfinite(weight)):
            raise InvalidInput(f"weight of {key!r} must be a finite number >= 0, got {weight!r}", field="weights")
        out[str(key)] = float(weight)
    if sum(out.values()) <= 0:
        raise InvalidInput("at least one weight must be > 0", field="weights")
    return out
