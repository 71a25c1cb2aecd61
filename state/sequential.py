"""Normal-mixture sequential probability ratio test (METHODS.md section 4).

Everything is vectorised over hypotheses and computed in log space. The GrowthBook-style
``n_star`` parameterisation is the same martingale with mixing variance
tau^2 = rho^2 * V * N (rho from section 4), so both share one code path: substituting it into the
tau^2 formulas gives exactly the section-4 expressions for the half-width and the p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class MixtureScore:
    """Result of scoring hypotheses at one look (arrays of one shape)."""

    log_mlr: np.ndarray
    local_p_value: np.ndarray

    @property
    def mixture_likelihood_ratio(self) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(self.log_mlr)


@dataclass(frozen=True, slots=True)
class SequentialTest:
    """mSPRT of H0: effect = 0 with a N(0, tau^2) mixture, or the n_star parameterisation.

    ``alpha`` fixes rho in the n_star form (gbstats tunes the mixture to the design alpha); the
    level of each confidence sequence is passed separately so the FDR-corrected and reset
    intervals can use their own levels with the same mixture.
    """

    tau2: float = 0.01
    n_star: float | None = None
    alpha: float = 0.1

    def mixing_variance(self, variance: np.ndarray, total_units: np.ndarray) -> np.ndarray | float:
        if self.n_star is None:
            return self.tau2
        a = self.alpha
        rho2 = (-2.0 * math.log(a) + math.log(1.0 - 2.0 * math.log(a))) / self.n_star
        return rho2 * variance * total_units

    def score(self, theta: np.ndarray, variance: np.ndarray, tau2) -> MixtureScore:
        """log MLR = 0.5 log(V / (V + tau^2)) + tau^2 theta^2 / (2 V (V + tau^2))  (section 4)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._score(theta, variance, tau2)

    @staticmethod
    def _score(theta, variance, tau2) -> MixtureScore:
        """:meth:`score` without its errstate (the caller holds one)."""
        v_plus = variance + tau2
        log_mlr = 0.5 * np.log(variance / v_plus) + tau2 * theta * theta / (2.0 * variance * v_plus)
        return MixtureScore(log_mlr=log_mlr, local_p_value=np.minimum(1.0, np.exp(-log_mlr)))

    @staticmethod
    def half_width_terms(variance: np.ndarray, tau2) -> tuple[np.ndarray, np.ndarray]:
        """The level-free parts of the half-width, V (V + tau^2) / tau^2 and ln((V + tau^2) / V), so
        several levels (alpha, corrected, reset) cost one square root each."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return SequentialTest._half_width_terms(variance, tau2)

    @staticmethod
    def _half_width_terms(variance, tau2):
        v_plus = variance + tau2
        return variance * v_plus / tau2, np.log(v_plus / variance)

    @classmethod
    def half_width(cls, variance: np.ndarray, tau2, level) -> np.ndarray:
        """Confidence-sequence half-width at ``level`` a (section 4):
        sqrt( V (V + tau^2) / tau^2 * (2 ln(1/a) + ln((V + tau^2) / V)) ).
        """
        spread, log_ratio = cls.half_width_terms(variance, tau2)
        with np.errstate(invalid="ignore"):
            return np.sqrt(spread * (log_ratio - 2.0 * np.log(level)))
