"""Running state of one experiment: the engine's streaming core (METHODS.md sections 3 to 7).

:class:`ExperimentState` takes one interval's validated observations at a time (any subset of
metrics and variations) and returns an :class:`~state.results.IntervalResult`: the section-8 rows
of every hypothesis seen so far, alerts, and the SRM status. The batch call feeds the same object
interval by interval, so streaming and batch share this one code path.

Layout: arms (metric x variation) hold lifetime totals; hypotheses (metric x treatment) hold their
segment's statistics per epoch, shape (H, E, 2, 3) with axis 2 = (treatment, control), so a stats
reset of one hypothesis restarts only that hypothesis. Everything per hypothesis is a numpy
vector; there is no per-interval history, so state stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .config import EngineConfig, MetricConfig
from .effects import EffectEstimate, _estimate_effects
from .errors import InvalidInput
from .fdr import benjamini_hochberg
from .observation import Observation
from .results import Alert, IntervalResult, SrmStatus
from .sequential import SequentialTest
from .srm import dirichlet_multinomial_log_bf, sequential_p_value

# Running quantities per hypothesis and the value each starts a segment with.
_RUNNING_START = {
    "min_p": 1.0,  # always-valid p: running min of local p (section 4)
    "min_corrected_p": 1.0,  # running min of BH-adjusted p (section 5)
    "unc_lo": -math.inf,  # running intersection of local CIs at alpha (section 4)
    "unc_hi": math.inf,
    "cor_lo": -math.inf,  # running intersection at the FDR-corrected level (section 5)
    "cor_hi": math.inf,
    "reset_lo": -math.inf,  # running intersection at reset_alpha (section 6)
    "reset_hi": math.inf,
}


@dataclass(frozen=True, slots=True)
class Scores:
    """One look at every hypothesis (arrays over hypotheses), before the running quantities."""

    estimate: EffectEstimate
    valid: np.ndarray  # past burn-in, defined and testable
    all_valid: bool
    undefined: np.ndarray  # relative lift with a zero control mean
    degenerate: np.ndarray  # zero or non-finite effect variance
    theta: np.ndarray  # reported effect: 0 in burn-in, NaN when undefined
    centre: np.ndarray  # theta, 0 where there is no valid estimate
    variance: np.ndarray
    spread: np.ndarray  # V (V + tau^2) / tau^2, inf where invalid: (-inf, inf) intervals
    log_ratio: np.ndarray  # ln((V + tau^2) / V)
    log_mlr: np.ndarray
    local_p: np.ndarray


class ExperimentState:
    """Sufficient statistics and running results of one experiment; see the module docstring."""

    def __init__(
        self,
        experiment_id: str,
        config: EngineConfig | None = None,
        metric_configs: Mapping[str, MetricConfig] | None = None,
    ):
        self.experiment_id = str(experiment_id)
        self.config = config or EngineConfig()
        self.metric_configs: dict[str, MetricConfig] = dict(metric_configs or {})
        self.metrics: list[str] = []
        self.variations: list[str] = []
        self._arm_of: dict[tuple[int, int], int] = {}
        self._arm_by_name: dict[tuple[str, str], int] = {}
        self.lifetime = np.zeros((0, 3))
        self.hyp_metric = np.zeros(0, dtype=np.int64)
        self.hyp_variation = np.zeros(0, dtype=np.int64)
        self.hyp_treatment_arm = np.zeros(0, dtype=np.int64)
        self.hyp_control_arm = np.zeros(0, dtype=np.int64)
        self.segment_stats = np.zeros((0, 1, 2, 3))
        self.running = {name: np.zeros(0) for name in _RUNNING_START}
        self.rejected = np.zeros(0, dtype=bool)
        self.segment = np.zeros(0, dtype=np.int64)
        self.quality_flag = np.zeros(0, dtype=bool)
        self.epoch = 0
        self.epoch_pending = False
        self.epoch_weights: dict[str, float] | None = None if self.config.weights is None else dict(self.config.weights)
        self.srm_counts: list[float] = []
        self.srm_max_log_bf = -math.inf
        self.srm_alerted = False
        self.last_interval: float | None = None
        self.intervals = 0
        self._config_docs()
        self._derive()

    # ----------------------------------------------------------------------------- configuration
    def reconfigure(self, config: EngineConfig, metric_configs: Mapping[str, MetricConfig] | None = None) -> bool:
        """Apply a new config version; returns True when its weights start a new epoch (section 6)."""
        new_weights = None if config.weights is None else dict(config.weights)
        self.config = config
        if metric_configs is not None:
            self.metric_configs = dict(metric_configs)
        self._config_docs()
        self._derive()
        if new_weights != self.epoch_weights:
            self.epoch_weights = new_weights
            # Before any data the allocation simply defines epoch 0: nothing to stratify yet.
            self.epoch_pending = self.intervals > 0
        return self.epoch_pending

    def metric_config(self, metric: str) -> MetricConfig:
        return self.metric_configs.get(metric) or MetricConfig()

    def _derive(self) -> None:
        """Per-hypothesis option vectors, recomputed when hypotheses or configs change."""
        cfgs = [self.metric_config(self.metrics[m]) for m in self.hyp_metric.tolist()]
        self.is_binary = np.array([c.is_binary for c in cfgs], dtype=bool)
        self.relative = np.array([(c.effect or self.config.effect) == "relative" for c in cfgs], dtype=bool)
        self.in_family = np.array([c.in_fdr_family for c in cfgs], dtype=bool)
        self._family_size = int(self.in_family.sum())
        self._whole_family = self._family_size == len(cfgs)
        self.test = SequentialTest(tau2=self.config.tau2, n_star=self.config.n_star, alpha=self.config.alpha)
        self._binary_mask = self.is_binary if self.is_binary.any() else None
        self._relative_arg = True if self.relative.all() else self.relative
        self._hyp_arms = np.stack([self.hyp_treatment_arm, self.hyp_control_arm], axis=1)  # (H, 2)
        self._effect_names = ["relative" if r else "absolute" for r in self.relative.tolist()]
        self._metric_names = [self.metrics[m] for m in self.hyp_metric.tolist()]
        self._variation_names = [self.variations[v] for v in self.hyp_variation.tolist()]
        self._shares = None  # expected SRM shares, cached until variations or weights change

    def _config_docs(self) -> None:
        """Serialised forms of the configs, made when a config changes rather than per write."""
        self.config_doc = self.config.to_dict()
        self.metric_config_docs = {name: cfg.to_dict() for name, cfg in self.metric_configs.items()}

    # ------------------------------------------------------------------------------ registration
    def _index(self, names: list[str], name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            names.append(name)
            return len(names) - 1

    def _arm(self, metric: int, variation: int) -> int:
        key = (metric, variation)
        arm = self._arm_of.get(key)
        if arm is None:
            arm = self._arm_of[key] = len(self.lifetime)
            self._arm_by_name[(self.metrics[metric], self.variations[variation])] = arm
            self.lifetime = np.vstack([self.lifetime, np.zeros((1, 3))])
        return arm

    def _register(self, metric_name: str, variation_name: str) -> int:
        """Arm index of (metric, variation), creating the arm and its hypothesis on first sight."""
        arm = self._arm_by_name.get((metric_name, variation_name))
        if arm is not None:
            return arm
        metric = self._index(self.metrics, metric_name)
        variation = self._index(self.variations, variation_name)
        arm = self._arm_of.get((metric, variation))
        if arm is not None:
            return arm
        arm = self._arm(metric, variation)
        if variation_name != self.config.reference_variation_id:
            control = self._arm(metric, self._index(self.variations, self.config.reference_variation_id))
            self._add_hypothesis(metric, variation, arm, control)
        return arm

    def _add_hypothesis(self, metric: int, variation: int, treatment_arm: int, control_arm: int) -> None:
        self.hyp_metric = np.append(self.hyp_metric, metric)
        self.hyp_variation = np.append(self.hyp_variation, variation)
        self.hyp_treatment_arm = np.append(self.hyp_treatment_arm, treatment_arm)
        self.hyp_control_arm = np.append(self.hyp_control_arm, control_arm)
        block = np.zeros((1,) + self.segment_stats.shape[1:])
        # A treatment that appears late is compared with everything its control has seen.
        block[0, -1, 1] = self.lifetime[control_arm]
        self.segment_stats = np.concatenate([self.segment_stats, block])
        for name, start in _RUNNING_START.items():
            self.running[name] = np.append(self.running[name], start)
        self.rejected = np.append(self.rejected, False)
        self.segment = np.append(self.segment, 0)
        self.quality_flag = np.append(self.quality_flag, False)
        self._derive()

    # ----------------------------------------------------------------------------------- update
    def update(self, interval_timestamp: float, observations: Sequence[Observation]) -> IntervalResult:
        """Apply one interval's observations and score every hypothesis.

        All checks run before any state changes, so a rejected interval leaves the state as it was.
        """
        ts = float(interval_timestamp)
        if self.last_interval is not None and not ts > self.last_interval:
            raise InvalidInput(
                f"interval {ts!r} is not after the last applied interval {self.last_interval!r}",
                field="interval_timestamp",
            )
        keys = [(obs.metric, obs.variation_id) for obs in observations]
        if len(set(keys)) != len(keys):
            metric, variation = next(k for k in keys if keys.count(k) > 1)
            raise InvalidInput(f"two observations of metric {metric!r}, variation {variation!r} in one interval")
        for obs in observations:
            if obs.interval_timestamp != ts:
                raise InvalidInput(f"observation of {obs.interval_timestamp!r} given for interval {ts!r}", field="interval_timestamp")

        alerts: list[Alert] = []
        epoch_boundary = self._start_epoch_if_pending()
        known = self._arm_by_name
        arms = [known.get(key) for key in keys]
        if None in arms:
            arms = [self._register(metric, variation) for metric, variation in keys]
        increments = np.zeros_like(self.lifetime)
        if arms:
            increments[arms] = np.array(
                [(o.unit_count, o.unit_observation_sum, o.unit_observation_sum_of_squares) for o in observations]
            )
        with np.errstate(all="ignore"):  # NaN and inf are meaningful outputs here, not faults
            columns = self._apply(ts, increments, epoch_boundary, alerts)
        srm = self._update_srm(ts, observations, alerts)
        self.last_interval = ts
        self.intervals += 1
        return IntervalResult(self.experiment_id, ts, columns, alerts, srm)

    def _apply(self, ts, increments, epoch_boundary, alerts) -> dict[str, list]:
        self.lifetime += increments
        arm_inc = increments[self._hyp_arms]  # (H, 2, 3): treatment and control increments
        self.segment_stats[:, -1] += arm_inc

        scores = self._score()
        reset = self._reset_check(scores)
        if reset.any():
            self.segment_stats[reset] = 0.0
            self.segment_stats[reset, -1] = arm_inc[reset]
            self.segment[reset] += 1
            for name, start in _RUNNING_START.items():
                self.running[name][reset] = start
            scores = self._score()
            self._reset_check(scores)
        return self._advance(ts, scores, reset, epoch_boundary, alerts)

    def _start_epoch_if_pending(self) -> bool:
        if not self.epoch_pending:
            return False
        self.epoch_pending = False
        self.epoch += 1
        self._shares = None
        stats = self.segment_stats
        # Keep only epochs that still hold data for some hypothesis, then open the new one.
        used = stats.reshape(stats.shape[0], stats.shape[1], 6).any(axis=(0, 2))
        self.segment_stats = np.concatenate([stats[:, used], np.zeros((stats.shape[0], 1, 2, 3))], axis=1)
        self.srm_counts = [0.0] * len(self.variations)
        self.srm_max_log_bf = -math.inf
        self.srm_alerted = False
        return True

    def _score(self) -> "Scores":
        cfg = self.config
        est = _estimate_effects(
            self.segment_stats,
            self._binary_mask,
            self._relative_arg,
            cfg.variance_method,
            cfg.variance_ddof,
        )
        warm = (est.units_treatment >= cfg.min_units) & (est.units_control >= cfg.min_units)
        defined = est.mean_control != 0  # m_c = 0: relative lift undefined (section 2)
        if self._relative_arg is not True:
            defined |= ~self.relative
        testable = (est.variance > 0) & (est.variance < np.inf)  # else no test is possible
        valid = warm & defined & testable
        all_valid = bool(valid.all())
        if all_valid:  # the usual case after burn-in: no masking needed
            undefined = degenerate = np.zeros(len(valid), dtype=bool)
            theta = centre = est.effect
            variance = est.variance
        else:
            undefined = warm & ~defined
            degenerate = warm & defined & ~testable
            variance = np.where(valid, est.variance, 1.0)
            theta = np.where(valid, est.effect, np.where(undefined, np.nan, 0.0))
            centre = np.where(valid, theta, 0.0)
        tau2 = cfg.tau2 if cfg.n_star is None else self.test.mixing_variance(variance, est.units_treatment + est.units_control)
        mix = self.test._score(centre, variance, tau2)
        spread, log_ratio = self.test._half_width_terms(variance, tau2)
        log_mlr, local_p = mix.log_mlr, mix.local_p_value
        if not all_valid:  # burn-in and undefined: MLR 1, p 1, CI (-inf, inf) via an infinite spread
            spread = np.where(valid, spread, np.inf)
            log_mlr = np.where(valid, log_mlr, 0.0)
            local_p = np.where(valid, local_p, 1.0)
        return Scores(estimate=est, valid=valid, all_valid=all_valid, undefined=undefined, degenerate=degenerate,
                      theta=theta, centre=centre, variance=variance, spread=spread, log_ratio=log_ratio,
                      log_mlr=log_mlr, local_p=local_p)

    def _interval(self, scores, level) -> tuple[np.ndarray, np.ndarray]:
        """Local confidence interval at ``level``; (-inf, inf) where there is no valid estimate."""
        log_level = math.log(level) if isinstance(level, float) else np.log(level)
        half = np.sqrt(scores.spread * (scores.log_ratio - 2.0 * log_level))
        return scores.centre - half, scores.centre + half

    def _reset_check(self, scores) -> np.ndarray:
        """Section 6: under a constant effect the running intersection at reset_alpha stays
        non-empty with probability >= 1 - reset_alpha; an empty one means the effect changed."""
        lo, hi = self._interval(scores, self.config.reset_alpha)
        lo = np.maximum(self.running["reset_lo"], lo)
        hi = np.minimum(self.running["reset_hi"], hi)
        if not self.config.use_stats_resets:
            self.running["reset_lo"], self.running["reset_hi"] = lo, hi
            return np.zeros(len(lo), dtype=bool)
        reset = lo > hi
        self.running["reset_lo"], self.running["reset_hi"] = lo, hi
        return reset

    def _advance(self, ts, scores, reset, epoch_boundary, alerts) -> dict[str, list]:
        cfg, run = self.config, self.running
        local_p = scores.local_p
        run["min_p"] = np.minimum(run["min_p"], local_p)
        local_lo, local_hi = self._interval(scores, cfg.alpha)
        run["unc_lo"] = np.maximum(run["unc_lo"], local_lo)
        run["unc_hi"] = np.minimum(run["unc_hi"], local_hi)

        # Section 5: BH over the family's always-valid p, then a running minimum over time.
        family, size, whole = self.in_family, self._family_size, self._whole_family
        if whole:
            adjusted = benjamini_hochberg(run["min_p"])
        else:
            adjusted = run["min_p"].copy()
            if size:
                adjusted[family] = benjamini_hochberg(run["min_p"][family])
        corrected = run["min_corrected_p"] = np.minimum(run["min_corrected_p"], adjusted)
        discoveries = int(np.count_nonzero((corrected if whole else corrected[family]) <= cfg.alpha))
        family_factor = max(discoveries, 1) / size if size else 1.0
        if whole:
            factor = family_factor  # one scalar for the whole family (_interval takes math.log of it)
            factor_column = [factor] * len(family)
        else:
            factor = np.where(family, family_factor, 1.0)
            factor_column = factor.tolist()
        cor_lo, cor_hi = self._interval(scores, cfg.alpha * factor)
        run["cor_lo"] = np.maximum(run["cor_lo"], cor_lo)
        run["cor_hi"] = np.minimum(run["cor_hi"], cor_hi)
        rejected = run["min_corrected_p"] < cfg.alpha

        self._collect_alerts(ts, scores, reset, rejected, alerts)
        self.rejected = rejected

        est = scores.estimate
        lifetime_t = self.lifetime[self.hyp_treatment_arm]
        lifetime_c = self.lifetime[self.hyp_control_arm]
        n = len(local_p)
        standard_error = np.sqrt(scores.variance)
        if not scores.all_valid:
            standard_error = np.where(scores.valid, standard_error, np.inf)
        mixture_likelihood_ratio = np.exp(scores.log_mlr)  # may overflow to inf: output only
        columns = {
            "alpha": [cfg.alpha] * n,
            "corrected_conf_interval_lower": run["cor_lo"].tolist(),
            "corrected_conf_interval_upper": run["cor_hi"].tolist(),
            "corrected_p_value": run["min_corrected_p"].tolist(),
            "epoch_boundary": [epoch_boundary] * n,
            "fdr_correction_factor": factor_column,
            "interval_timestamp": [ts] * n,
            "lift_estimate": scores.theta.tolist(),
            "local_p_value": local_p.tolist(),
            "mixture_likelihood_ratio": mixture_likelihood_ratio.tolist(),
            "rejected": rejected.tolist(),
            "standard_error": standard_error.tolist(),
            "stats_reset": reset.tolist(),
            "total_sample_variance": (est.variance_treatment + est.variance_control).tolist(),
            "treatment_observation_cumsum": lifetime_t[:, 1].tolist(),
            "treatment_sample_variance": est.variance_treatment.tolist(),
            "treatment_unit_cumcount": lifetime_t[:, 0].tolist(),
            "uncorrected_conf_interval": run["unc_hi"].tolist(),
            "uncorrected_local_conf_interval_lower": local_lo.tolist(),
            "uncorrected_local_conf_interval_upper": local_hi.tolist(),
            "variation_id": self._variation_names,
            "experiment_id": [self.experiment_id] * n,
            "metric": self._metric_names,
            "reference_variation_id": [cfg.reference_variation_id] * n,
            "effect": self._effect_names,
            "always_valid_p_value": run["min_p"].tolist(),
            "uncorrected_conf_interval_lower": run["unc_lo"].tolist(),
            "uncorrected_conf_interval_upper": run["unc_hi"].tolist(),
            "control_unit_cumcount": lifetime_c[:, 0].tolist(),
            "control_observation_cumsum": lifetime_c[:, 1].tolist(),
            "control_sample_variance": est.variance_control.tolist(),
            "epoch": [self.epoch] * n,
            "segment": self.segment.tolist(),
        }
        return columns

    def _collect_alerts(self, ts, scores, reset, rejected, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        theta = scores.theta
        if reset.any():
            self._reset_alerts(ts, reset, alerts)
        changed = rejected != self.rejected
        if changed.any():
            self._significance_alerts(ts, theta, changed, rejected, alerts)
        if scores.all_valid:
            if self.quality_flag.any():
                self.quality_flag = np.zeros(len(self.quality_flag), dtype=bool)
            return
        problem = scores.undefined | scores.degenerate
        if problem.any():
            self._quality_alerts(ts, scores, problem, alerts)
        self.quality_flag = problem

    def _reset_alerts(self, ts, reset, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(reset).tolist():
            alerts.append(Alert("stats_reset", self.experiment_id, ts,
                                f"effect of {variations[h]!r} on {metrics[h]!r} changed over time: statistics restarted",
                                metrics[h], variations[h], {"segment": int(self.segment[h])}))

    def _significance_alerts(self, ts, theta, changed, rejected, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(changed).tolist():
            reached = bool(rejected[h])
            better = (theta[h] > 0) != self.metric_config(metrics[h]).lower_is_better
            direction = "improvement" if better else "regression"
            alerts.append(Alert("significance_reached" if reached else "significance_lost", self.experiment_id, ts,
                                f"{variations[h]!r} on {metrics[h]!r}: "
                                + (f"significant {direction}" if reached else "no longer significant"),
                                metrics[h], variations[h],
                                {"lift_estimate": float(theta[h]), "direction": direction if reached else None,
                                 "corrected_p_value": float(self.running["min_corrected_p"][h])}))

    def _quality_alerts(self, ts, scores, problem, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(problem & ~self.quality_flag).tolist():
            reason = ("control mean is 0: relative lift is undefined" if scores.undefined[h]
                      else "effect variance is 0 or not finite: no test possible")
            alerts.append(Alert("data_quality", self.experiment_id, ts, f"{variations[h]!r} on {metrics[h]!r}: {reason}",
                                metrics[h], variations[h], {"reason": reason}))

    # --------------------------------------------------------------------------------------- SRM
    def expected_shares(self) -> list[float]:
        """Intended allocation over the variations seen so far (equal when no weights are set)."""
        key = (len(self.variations), self.epoch_weights)
        if self._shares is not None and self._shares[0] == key:
            return self._shares[1]
        k = max(len(self.variations), 1)
        weights = self.epoch_weights
        w = [1.0] * k if weights is None else [weights.get(v, 0.0) for v in self.variations]
        total = sum(w)
        shares = [x / total for x in w] if total > 0 else [1.0 / k] * k
        self._shares = (key, shares)
        return shares

    def _update_srm(self, ts, observations: Iterable[Observation], alerts: list[Alert]) -> SrmStatus:
        """Section 7: units are shared by all metrics, so an (interval, variation) counts once —
        the largest unit_count any metric reports for it."""
        k = len(self.variations)
        counts = self.srm_counts + [0.0] * (k - len(self.srm_counts))
        seen: dict[str, float] = {}
        for obs in observations:
            if obs.unit_count > seen.get(obs.variation_id, 0.0):
                seen[obs.variation_id] = obs.unit_count
        for i, variation in enumerate(self.variations):
            counts[i] += seen.get(variation, 0.0)
        self.srm_counts = counts
        shares = self.expected_shares()
        if seen and k > 1:
            log_bf = dirichlet_multinomial_log_bf(counts, shares, self.config.srm_concentration)
            self.srm_max_log_bf = max(self.srm_max_log_bf, log_bf)
        p_value = sequential_p_value(self.srm_max_log_bf)
        detected = p_value <= self.config.srm_alpha
        if detected and not self.srm_alerted:
            self.srm_alerted = True
            total = max(sum(counts), 1.0)
            observed = [round(c / total, 4) for c in counts]
            alerts.append(Alert("srm", self.experiment_id, ts,
                                f"sample ratio mismatch: observed shares {observed} against expected "
                                f"{[round(s, 4) for s in shares]} (sequential p = {p_value:.3g})",
                                details={"variations": list(self.variations), "exposures": counts,
                                         "expected_share": shares, "sequential_p_value": p_value}))
        return SrmStatus(
            variations=tuple(self.variations),
            exposures=tuple(counts),
            expected_share=tuple(shares),
            sequential_p_value=p_value,
            log_bayes_factor=self.srm_max_log_bf,
            confidence_level=self.config.srm_confidence_level,
            detected=detected,
        )
