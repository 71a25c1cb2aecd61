"""Named result objects the engine returns: output rows, alerts, SRM status, interval results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Mapping

from .srm import SrmCheckResult, chi_square_srm

# METHODS.md section 8: the reference service's 21 columns first (alphabetical, as it returns
# them), then seqstream's additions.
SES_COLUMNS = (
    "alpha",
    "corrected_conf_interval_lower",
    "corrected_conf_interval_upper",
    "corrected_p_value",
    "epoch_boundary",
    "fdr_correction_factor",
    "interval_timestamp",
    "lift_estimate",
    "local_p_value",
    "mixture_likelihood_ratio",
    "rejected",
    "standard_error",
    "stats_reset",
    "total_sample_variance",
    "treatment_observation_cumsum",
    "treatment_sample_variance",
    "treatment_unit_cumcount",
    "uncorrected_conf_interval",
    "uncorrected_local_conf_interval_lower",
    "uncorrected_local_conf_interval_upper",
    "variation_id",
)
EXTRA_COLUMNS = (
    "experiment_id",
    "metric",
    "reference_variation_id",
    "effect",
    "always_valid_p_value",
    "uncorrected_conf_interval_lower",
    "uncorrected_conf_interval_upper",
    "control_unit_cumcount",
    "control_observation_cumsum",
    "control_sample_variance",
    "epoch",
    "segment",
    "effect_changed",
)
ROW_COLUMNS = SES_COLUMNS + EXTRA_COLUMNS

ALERT_KINDS = ("srm", "significance_reached", "significance_lost", "stats_reset", "effect_changed", "data_quality")


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    experiment_id: str
    interval_timestamp: float
    message: str
    metric: str | None = None
    variation_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["details"] = dict(self.details)
        return out


@dataclass(frozen=True, slots=True)
class SrmStatus:
    """Experiment-level SRM view after an interval (counts since the current epoch began)."""

    variations: tuple[str, ...]
    exposures: tuple[float, ...]
    expected_share: tuple[float, ...]
    sequential_p_value: float
    log_bayes_factor: float
    confidence_level: float
    detected: bool

    @property
    def chi_square(self) -> SrmCheckResult:
        """Fixed-horizon check, computed on demand: it is reported, never alerted on."""
        return chi_square_srm(self.exposures, self.expected_share, self.confidence_level)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["chi_square"] = asdict(self.chi_square)
        return out


@dataclass(frozen=True)
class IntervalResult:
    """One interval's output. ``columns`` maps each section-8 column to one value per
    hypothesis; ``rows`` builds the row dicts on first use (most of an update's cost otherwise).
    ``all_finite`` is True when every number in ``columns`` is known to be finite (no NaN or
    infinity); False when some is not, or when nobody checked."""

    experiment_id: str
    interval_timestamp: float
    columns: Mapping[str, list]
    alerts: list[Alert]
    srm: SrmStatus
    all_finite: bool = False

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        values = [self.columns[name] for name in ROW_COLUMNS]
        return [dict(zip(ROW_COLUMNS, row)) for row in zip(*values)]
