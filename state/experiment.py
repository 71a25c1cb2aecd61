"""Running state of one experiment: the engine's streaming core (METHODS.md sections 3 to 7).

:class:`ExperimentState` takes one interval's validated observations at a time (any subset of
metrics and variations) and returns an :class:`~state.results.IntervalResult`: the section-8 rows
of every hypothesis seen so far, alerts, and the SRM status. The batch call feeds the same object
interval by interval, so streaming and batch share this one code path. :func:`update_many` does
the same for many experiments at once: it scores experiments that share a layout in one
vectorised pass (state/block.py), which is what the stream does with a batch's closed intervals.

Layout: arms (metric x variation) hold lifetime totals; hypotheses (metric x treatment) hold their
segment's statistics per epoch, shape (H, E, 2, 3) with axis 2 = (treatment, control), so a stats
reset of one hypothesis restarts only that hypothesis. Everything per hypothesis is a numpy
vector; there is no per-interval history, so state stays bounded.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .block import RUNNING_START as _RUNNING_START
from .block import RUNNING_SHAPE, WINDOW_LOOKS
from .block import HypothesisBlock, Step
from .config import EngineConfig, MetricConfig
from .errors import InvalidInput
from .observation import Observation
from .results import Alert, IntervalResult, SrmStatus
from .sequential import SequentialTest
from .srm import dirichlet_multinomial_log_bf, sequential_p_value


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
        self.running = {name: np.zeros((0,) + RUNNING_SHAPE.get(name, ())) for name in _RUNNING_START}
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
        # Per-metric variance conventions (config.MetricConfig.ddof): one int when all agree, the
        # cheap path of arms._arm_moments, else one value per hypothesis.
        ddof = np.array([c.ddof(self.config.variance_ddof) for c in cfgs], dtype=np.int64)
        self._ddof = int(ddof[0]) if len(ddof) and (ddof == ddof[0]).all() else (ddof if len(ddof) else 0)
        self._relative_arg = True if self.relative.all() else self.relative
        self._hyp_arms = np.stack([self.hyp_treatment_arm, self.hyp_control_arm], axis=1)  # (H, 2)
        self._effect_names = ["relative" if r else "absolute" for r in self.relative.tolist()]
        self._metric_names = [self.metrics[m] for m in self.hyp_metric.tolist()]
        self._variation_names = [self.variations[v] for v in self.hyp_variation.tolist()]
        self._shares = None  # expected SRM shares, cached until variations or weights change
        cfg = self.config
        self._options_key = (cfg.alpha, cfg.tau2, cfg.n_star, cfg.min_units, cfg.variance_method, ddof.tobytes(),
                             cfg.reset_alpha, cfg.use_stats_resets, self.is_binary.tobytes(),
                             self.relative.tobytes(), self.in_family.tobytes(), self._hyp_arms.tobytes())

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
        """Index of the arm, numbering a new one (its row of ``lifetime`` is added by
        :meth:`_register_all`)."""
        key = (metric, variation)
        arm = self._arm_of.get(key)
        if arm is None:
            arm = self._arm_of[key] = len(self._arm_of)
            self._arm_by_name[(self.metrics[metric], self.variations[variation])] = arm
        return arm

    def _register(self, metric_name: str, variation_name: str, new_hypotheses: list) -> int:
        """Arm index of (metric, variation), numbering the arm and queueing its hypothesis
        (treatment metric, variation, treatment arm, control arm) on first sight."""
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
            new_hypotheses.append((metric, variation, arm, control))
        return arm

    def _register_all(self, keys: Sequence[tuple[str, str]]) -> list[int]:
        """Arm indices of ``keys`` in first-sight order, creating unseen arms and hypotheses: the
        arrays grow once per interval and the option vectors are derived once, not per arm."""
        known_arms = len(self.lifetime)
        new_hypotheses: list[tuple[int, int, int, int]] = []
        arms = [self._register(metric, variation, new_hypotheses) for metric, variation in keys]
        added = len(self._arm_of) - known_arms
        if added:
            self.lifetime = np.concatenate([self.lifetime, np.zeros((added, 3))])
        if new_hypotheses:
            self._add_hypotheses(new_hypotheses)
        return arms

    def _add_hypotheses(self, new: list[tuple[int, int, int, int]]) -> None:
        metric, variation, treatment_arm, control_arm = (np.array(column, dtype=np.int64) for column in zip(*new))
        self.hyp_metric = np.concatenate([self.hyp_metric, metric])
        self.hyp_variation = np.concatenate([self.hyp_variation, variation])
        self.hyp_treatment_arm = np.concatenate([self.hyp_treatment_arm, treatment_arm])
        self.hyp_control_arm = np.concatenate([self.hyp_control_arm, control_arm])
        # A treatment that appears late is compared only with what its control saw from then on
        # (state/METHODS.md F8b): the control's earlier data are from another time, and any drift
        # of the metric between then and now would read as an effect of the treatment.
        block = np.zeros((len(new),) + self.segment_stats.shape[1:])
        self.segment_stats = np.concatenate([self.segment_stats, block])
        for name, start in _RUNNING_START.items():
            shape = (len(new),) + RUNNING_SHAPE.get(name, ())
            self.running[name] = np.concatenate([self.running[name], np.full(shape, start)])
        self.rejected = np.concatenate([self.rejected, np.zeros(len(new), dtype=bool)])
        self.segment = np.concatenate([self.segment, np.zeros(len(new), dtype=np.int64)])
        self.quality_flag = np.concatenate([self.quality_flag, np.zeros(len(new), dtype=bool)])
        self._derive()

    # ----------------------------------------------------------------------------------- update
    def update(self, interval_timestamp: float, observations: Sequence[Observation]) -> IntervalResult:
        """Apply one interval's observations and score every hypothesis.

        All checks run before any state changes, so a rejected interval leaves the state as it was.
        """
        return update_many([(self, interval_timestamp, observations)])[0]

    def block_key(self) -> tuple:
        """Experiments with equal keys share hypothesis layout, shapes and scoring options, so
        :func:`update_many` scores them in one :class:`~state.block.HypothesisBlock`."""
        return (self.segment_stats.shape, self.lifetime.shape, self._options_key)

    def _check(self, interval_timestamp: float, observations: Sequence[Observation]) -> tuple[float, list]:
        """Raise InvalidInput for an interval that cannot be applied; changes nothing. Returns the
        timestamp and the rows' (metric, variation) keys, for :meth:`_prepare`."""
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
        return ts, keys

    def _prepare(self, ts: float, keys: list, observations: Sequence[Observation]) -> "_Prepared":
        """Register new arms and open a pending epoch for a checked interval: everything before
        the scoring, which may then run for many experiments at once."""
        epoch_boundary = self._start_epoch_if_pending()
        known = self._arm_by_name
        arms = [known.get(key) for key in keys]
        if None in arms:
            arms = self._register_all(keys)
        return _Prepared(self, ts, observations, arms, epoch_boundary)

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
        # change-detection windows pool their data unstratified: a new allocation starts new ones
        self.running["win_looks"] = np.full(len(self.hyp_metric), float(WINDOW_LOOKS))
        return True

    def _take_block_row(self, block: HypothesisBlock, g: int, copy: bool) -> None:
        """Adopt experiment ``g``'s rows of a scored block (copies when the block is shared, so no
        experiment keeps a whole block alive)."""
        if not copy:  # the block is this experiment's own arrays, updated in place but for these two
            self.rejected, self.quality_flag = block.rejected, block.quality_flag
            return
        rows = slice(g * len(self.hyp_metric), (g + 1) * len(self.hyp_metric))
        self.lifetime = block.lifetime[g].copy()
        self.segment_stats = block.stats[rows].copy()
        self.running = {name: values[rows].copy() for name, values in block.running.items()}
        self.rejected = block.rejected[rows].copy()
        self.segment = block.segment[rows].copy()
        self.quality_flag = block.quality_flag[rows].copy()

    # -------------------------------------------------------------------------------- alerts
    def _collect_alerts(self, ts, scores, rows: slice, step: Step, alerts: list[Alert]) -> None:
        reset, rejected = step.reset[rows], self.rejected
        if reset.any():
            self._reset_alerts(ts, reset, alerts)
        changed = rejected != step.previous_rejected[rows]
        if changed.any():
            self._significance_alerts(ts, scores.theta[rows], changed, rejected, alerts)
        effect_changed = step.effect_changed[rows] & ~step.previous_effect_changed[rows]
        if effect_changed.any():
            self._effect_changed_alerts(ts, effect_changed, alerts)
        if not scores.all_valid:
            new_problem = self.quality_flag & ~step.previous_quality[rows]
            if new_problem.any():
                self._quality_alerts(ts, scores.undefined[rows], new_problem, alerts)

    def _reset_alerts(self, ts, reset, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(reset).tolist():
            alerts.append(Alert("stats_reset", self.experiment_id, ts,
                                f"effect of {variations[h]!r} on {metrics[h]!r} changed over time: statistics restarted",
                                metrics[h], variations[h], {"segment": int(self.segment[h])}))

    def _effect_changed_alerts(self, ts, changed, alerts: list[Alert]) -> None:
        """state/METHODS.md F4: once per hypothesis and segment (the intersection stays empty
        until a stats reset restarts it)."""
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(changed).tolist():
            alerts.append(Alert("effect_changed", self.experiment_id, ts,
                                f"effect of {variations[h]!r} on {metrics[h]!r} changed over time: the always-valid "
                                "interval would be empty; rows show the latest interval",
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

    def _quality_alerts(self, ts, undefined, new_problem, alerts: list[Alert]) -> None:
        metrics, variations = self._metric_names, self._variation_names
        for h in np.flatnonzero(new_problem).tolist():
            reason = ("control mean is 0: relative lift is undefined" if undefined[h]
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


class _Prepared(NamedTuple):
    """An interval checked and registered by :meth:`ExperimentState._prepare`, not yet scored."""

    state: ExperimentState
    ts: float
    observations: Sequence[Observation]
    arms: list[int]  # the arm of each observation
    epoch_boundary: bool


def update_many(items: Sequence[tuple[ExperimentState, float, Sequence[Observation]]]) -> list[IntervalResult]:
    """:meth:`ExperimentState.update` for several experiments (each at most once), in one
    vectorised pass per group of experiments with equal :meth:`~ExperimentState.block_key`.

    Results come back in the order of ``items`` and equal, to the bit, what ``update`` gives
    each experiment alone (tests/test_engine.py checks this). Every interval is checked before
    any state changes, so an invalid one raises with all states as they were.
    """
    if len(items) == 1:  # ExperimentState.update: nothing to check across or group
        (state, ts, observations), = items
        prepared = state._prepare(*state._check(ts, observations), observations)
        with np.errstate(all="ignore"):  # NaN and inf are meaningful outputs here, not faults
            return _score_group([prepared])
    states = [state for state, _, _ in items]
    if len({id(s) for s in states}) != len(states):
        raise ValueError("update_many takes each experiment at most once; update them in rounds")
    checks = [state._check(ts, observations) for state, ts, observations in items]  # all, before any change
    checked = [state._prepare(ts, keys, observations) for (ts, keys), (state, _, observations) in zip(checks, items)]
    groups: dict[tuple, list[int]] = {}
    for i, state in enumerate(states):
        groups.setdefault(state.block_key(), []).append(i)
    results: list[IntervalResult | None] = [None] * len(items)
    with np.errstate(all="ignore"):
        for members in groups.values():
            prepared = [checked[i] for i in members]
            for i, result in zip(members, _score_group(prepared)):
                results[i] = result
    return results  # type: ignore[return-value]


def _alerting_experiments(block: HypothesisBlock, step: Step, hypotheses: int) -> set[int]:
    """Experiments of the block (by position) with a hypothesis that reset, changed its
    rejection or newly became undefined or degenerate: the only ones that can have a hypothesis
    alert. Found for the whole block at once, so that the usual experiment, with none, costs no
    per-experiment array operations (ExperimentState._collect_alerts checks again, per hypothesis)."""
    flagged = step.reset | (block.rejected != step.previous_rejected)
    flagged |= step.effect_changed & ~step.previous_effect_changed
    if not step.scores.all_valid:
        flagged |= block.quality_flag & ~step.previous_quality
    if not np.count_nonzero(flagged):
        return set()
    return set((np.flatnonzero(flagged) // hypotheses).tolist())


def _increments(prepared: Sequence[_Prepared]) -> np.ndarray:
    """(G, A, 3) per experiment and arm: the interval's units, sum and sum of squares (0 for an
    arm without an observation), filled for the whole group in one assignment."""
    groups, arms_per_experiment = len(prepared), len(prepared[0].state.lifetime)
    increments = np.zeros((groups, arms_per_experiment, 3))
    rows = [g * arms_per_experiment + arm for g, p in enumerate(prepared) for arm in p.arms]
    if rows:
        increments.reshape(-1, 3)[rows] = [(o.unit_count, o.unit_observation_sum, o.unit_observation_sum_of_squares)
                                           for p in prepared for o in p.observations]
    return increments


def _score_group(prepared: Sequence[_Prepared]) -> list[IntervalResult]:
    states = [p.state for p in prepared]
    block = HypothesisBlock.of(states)
    step = block.step(_increments(prepared))
    scores, est, run, cfg = step.scores, step.scores.estimate, block.running, block.config
    groups = len(states)
    lifetimes = block.per_hypothesis(block.lifetime, block.hyp_arms)  # (G*H, 2, 3): one indexing for both arms
    lifetime_t, lifetime_c = lifetimes[:, 0], lifetimes[:, 1]
    standard_error = np.sqrt(scores.variance)
    if scores.fieller is not None:
        # "fieller" tests the difference: its SE in units of the control mean is the lift's SE
        # under H0 (state/METHODS.md F2), reported on the lift's scale for relative effects
        relative_se = standard_error / np.abs(est.mean_control)
        standard_error = relative_se if scores.fieller_mask is None else np.where(scores.fieller_mask, relative_se,
                                                                                   standard_error)
    if not scores.all_valid:
        standard_error = np.where(scores.valid, standard_error, np.inf)
    per_hypothesis = {  # section 8 columns that vary by hypothesis
        "corrected_conf_interval_lower": step.corrected_lo,
        "corrected_conf_interval_upper": step.corrected_hi,
        "corrected_p_value": run["min_corrected_p"],
        "lift_estimate": scores.theta,
        "local_p_value": scores.local_p,
        "mixture_likelihood_ratio": np.exp(scores.log_mlr),  # may overflow to inf: output only
        "rejected": block.rejected,
        "standard_error": standard_error,
        "stats_reset": step.reset,
        "total_sample_variance": est.variance_treatment + est.variance_control,
        "treatment_observation_cumsum": lifetime_t[..., 1],
        "treatment_sample_variance": est.variance_treatment,
        "treatment_unit_cumcount": lifetime_t[..., 0],
        "uncorrected_conf_interval": step.uncorrected_hi,
        "uncorrected_local_conf_interval_lower": step.local_lo,
        "uncorrected_local_conf_interval_upper": step.local_hi,
        "always_valid_p_value": run["min_p"],
        "uncorrected_conf_interval_lower": step.uncorrected_lo,
        "uncorrected_conf_interval_upper": step.uncorrected_hi,
        "control_unit_cumcount": lifetime_c[..., 0],
        "control_observation_cumsum": lifetime_c[..., 1],
        "control_sample_variance": est.variance_control,
        "segment": block.segment,
        "effect_changed": step.effect_changed,
    }
    # Whether each experiment's numbers are all finite, found block-wide: a JSON writer must
    # replace NaN and infinity (JSON has neither), and the usual experiment, known to have none,
    # spares it a search of every row (IntervalResult.all_finite).
    # One isfinite over all float columns at once: per column it was two numpy calls each.
    floats = [values for values in per_hypothesis.values() if values.dtype.kind == "f"]
    if step.factor is not None:
        floats.append(step.factor)
    finite = np.isfinite(np.concatenate(floats)).reshape(len(floats), groups, -1).all(axis=(0, 2))
    # Of the other numbers, the interval and the FDR factors are finite by construction.
    all_finite = (finite & math.isfinite(cfg.alpha)).tolist()
    if groups == 1:
        per_experiment = [{name: values.tolist() for name, values in per_hypothesis.items()}]
        factors = None if step.factor is None else [step.factor.tolist()]
    else:
        lists = {name: values.reshape(groups, -1).tolist() for name, values in per_hypothesis.items()}
        per_experiment = [{name: values[g] for name, values in lists.items()} for g in range(groups)]
        factors = None if step.factor is None else step.factor.reshape(groups, -1).tolist()
    alerting = _alerting_experiments(block, step, len(states[0].hyp_metric))
    results = []
    for g, p in enumerate(prepared):
        state, ts = p.state, p.ts
        rows = slice(g * len(state.hyp_metric), (g + 1) * len(state.hyp_metric))
        state._take_block_row(block, g, copy=groups > 1)
        alerts: list[Alert] = []
        if g in alerting:
            state._collect_alerts(ts, scores, rows, step, alerts)
        n = len(state.hyp_metric)
        columns = per_experiment[g]
        columns.update({
            "alpha": [cfg.alpha] * n,
            "epoch_boundary": [p.epoch_boundary] * n,
            "fdr_correction_factor": [step.family_factor[g]] * n if factors is None else factors[g],
            "interval_timestamp": [ts] * n,
            "variation_id": state._variation_names,
            "experiment_id": [state.experiment_id] * n,
            "metric": state._metric_names,
            # the experiment's own config, not the block's: experiments with other references
            # may share a block (their scoring options are equal, block_key)
            "reference_variation_id": [state.config.reference_variation_id] * n,
            "effect": state._effect_names,
            "epoch": [state.epoch] * n,
        })
        srm = state._update_srm(ts, p.observations, alerts)
        state.last_interval = ts
        state.intervals += 1
        results.append(IntervalResult(state.experiment_id, ts, columns, alerts, srm, all_finite[g]))
    return results
