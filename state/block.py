"""Scoring of many experiments in one pass (METHODS.md sections 2, 4, 5 and 6).

At streaming sizes (ten hypotheses an experiment) numpy's per-call overhead, not arithmetic, is
the cost of an interval close: one close makes about 150 numpy calls on arrays of ten. A
:class:`HypothesisBlock` stacks the per-hypothesis arrays of G experiments that share their
hypothesis layout and options, experiment-major (experiment g owns rows g*H .. g*H + H - 1), so
those calls run once for all G. Everything per hypothesis is elementwise; only the
Benjamini-Hochberg step and the FDR factor are per experiment, along the last axis of a (G, H)
view. A block of one experiment is that experiment's own arrays, not a copy.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .effects import EffectEstimate, _estimate_effects
from .fdr import benjamini_hochberg

# Running quantities per hypothesis and the value each starts a segment with.
RUNNING_START = {
    "min_p": 1.0,  # always-valid p: running min of local p (section 4)
    "min_corrected_p": 1.0,  # running min of BH-adjusted p (section 5)
    "unc_lo": -math.inf,  # running intersection of local CIs at alpha (section 4)
    "unc_hi": math.inf,
    "cor_lo": -math.inf,  # running intersection at the FDR-corrected level (section 5)
    "cor_hi": math.inf,
    "reset_lo": -math.inf,  # running intersection at reset_alpha (section 6)
    "reset_hi": math.inf,
}


class Scores(NamedTuple):
    """One look at every hypothesis (arrays over hypotheses), before the running quantities.
    (Named tuples: made several times per close, where a frozen dataclass's __init__ shows.)"""

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


class Step(NamedTuple):
    """What one look at a block produced, per hypothesis (flat, experiment-major) unless noted."""

    scores: Scores
    reset: np.ndarray
    previous_rejected: np.ndarray
    local_lo: np.ndarray
    local_hi: np.ndarray
    previous_quality: np.ndarray  # data-quality flags before this look
    family_factor: list[float]  # per experiment
    factor: np.ndarray | None  # per hypothesis; None when the whole family is every hypothesis


class HypothesisBlock:
    """Stacked per-hypothesis state of experiments that share layout and options.

    ``layout`` is the first experiment: it supplies the options (config, mixture test, per-metric
    masks) and the arm-to-hypothesis map that all members share; see
    :meth:`state.experiment.ExperimentState.block_key`.
    """

    def __init__(self, layout, lifetime, stats, running, rejected, segment, quality_flag):
        self.groups = len(lifetime)
        self.config = layout.config
        self.test = layout.test
        self.hyp_arms = layout._hyp_arms
        self.hyp_treatment_arm = layout.hyp_treatment_arm
        self.hyp_control_arm = layout.hyp_control_arm
        self.in_family = layout.in_family
        self.family_size = layout._family_size
        self.whole_family = layout._whole_family
        tile = self.groups > 1
        self.relative = np.tile(layout.relative, self.groups) if tile else layout.relative
        mask = layout._binary_mask
        self.binary_mask = np.tile(mask, self.groups) if tile and mask is not None else mask
        self.relative_arg = layout._relative_arg if layout._relative_arg is True else self.relative
        self.lifetime = lifetime  # (G, A, 3)
        self.stats = stats  # (G*H, E, 2, 3)
        self.running = running  # name -> (G*H,)
        self.rejected = rejected
        self.segment = segment
        self.quality_flag = quality_flag

    @classmethod
    def of(cls, states: Sequence) -> "HypothesisBlock":
        """The block of ``states`` (all with one :meth:`block_key`); one state is not copied."""
        first = states[0]
        if len(states) == 1:
            return cls(first, first.lifetime[None], first.segment_stats, first.running, first.rejected,
                       first.segment, first.quality_flag)
        cat = np.concatenate
        return cls(first,
                   np.stack([s.lifetime for s in states]),
                   cat([s.segment_stats for s in states]),
                   {name: cat([s.running[name] for s in states]) for name in RUNNING_START},
                   cat([s.rejected for s in states]),
                   cat([s.segment for s in states]),
                   cat([s.quality_flag for s in states]))

    # ------------------------------------------------------------------------------- one look
    def step(self, increments: np.ndarray) -> Step:
        """Add one interval's arm increments (G, A, 3) and score; the running quantities advance."""
        self.lifetime += increments
        arm_inc = self.per_hypothesis(increments, self.hyp_arms)  # (G*H, 2, 3): treatment, control
        self.stats[:, -1] += arm_inc
        scores = self._score()
        reset = self._reset_check(scores)
        if reset.any():
            self.stats[reset] = 0.0
            self.stats[reset, -1] = arm_inc[reset]
            self.segment[reset] += 1
            for name, start in RUNNING_START.items():
                self.running[name][reset] = start
            scores = self._score()
            self._reset_check(scores)
        return self._advance(scores, reset)

    def per_hypothesis(self, per_arm: np.ndarray, arms: np.ndarray) -> np.ndarray:
        """Rows of a (G, A, 3) per-arm array picked by each hypothesis' arm index (``arms``, (H,)
        or (H, 2)), stacked experiment-major as the block's hypotheses are."""
        if self.groups == 1:  # plain indexing of one experiment's (A, 3): the cheaper numpy path
            return per_arm[0][arms]
        picked = per_arm[:, arms]
        return picked.reshape(-1, *picked.shape[2:])

    def _score(self) -> Scores:
        cfg = self.config
        est = _estimate_effects(self.stats, self.binary_mask, self.relative_arg, cfg.variance_method,
                                cfg.variance_ddof)
        warm = (est.units_treatment >= cfg.min_units) & (est.units_control >= cfg.min_units)
        defined = est.mean_control != 0  # m_c = 0: relative lift undefined (section 2)
        if self.relative_arg is not True:
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
        test = self.test
        tau2 = cfg.tau2 if cfg.n_star is None else test.mixing_variance(variance, est.units_treatment + est.units_control)
        mix = test._score(centre, variance, tau2)
        spread, log_ratio = test._half_width_terms(variance, tau2)
        log_mlr, local_p = mix.log_mlr, mix.local_p_value
        if not all_valid:  # burn-in and undefined: MLR 1, p 1, CI (-inf, inf) via an infinite spread
            spread = np.where(valid, spread, np.inf)
            log_mlr = np.where(valid, log_mlr, 0.0)
            local_p = np.where(valid, local_p, 1.0)
        return Scores(estimate=est, valid=valid, all_valid=all_valid, undefined=undefined, degenerate=degenerate,
                      theta=theta, centre=centre, variance=variance, spread=spread, log_ratio=log_ratio,
                      log_mlr=log_mlr, local_p=local_p)

    @staticmethod
    def _interval(scores: Scores, log_level) -> tuple[np.ndarray, np.ndarray]:
        """Local confidence interval at the level whose log is given; (-inf, inf) where there is
        no valid estimate (section 4)."""
        half = np.sqrt(scores.spread * (scores.log_ratio - 2.0 * log_level))
        return scores.centre - half, scores.centre + half

    def _reset_check(self, scores: Scores) -> np.ndarray:
        """Section 6: under a constant effect the running intersection at reset_alpha stays
        non-empty with probability >= 1 - reset_alpha; an empty one means the effect changed."""
        lo, hi = self._interval(scores, math.log(self.config.reset_alpha))
        lo = np.maximum(self.running["reset_lo"], lo)
        hi = np.minimum(self.running["reset_hi"], hi)
        self.running["reset_lo"], self.running["reset_hi"] = lo, hi
        if not self.config.use_stats_resets:
            return np.zeros(len(lo), dtype=bool)
        return lo > hi

    def _advance(self, scores: Scores, reset: np.ndarray) -> Step:
        cfg, run = self.config, self.running
        run["min_p"] = np.minimum(run["min_p"], scores.local_p)
        local_lo, local_hi = self._interval(scores, math.log(cfg.alpha))
        run["unc_lo"] = np.maximum(run["unc_lo"], local_lo)
        run["unc_hi"] = np.minimum(run["unc_hi"], local_hi)

        # Section 5: BH over each experiment's family of always-valid p, then a running minimum
        # over time. One experiment takes numpy's cheaper one-dimensional path.
        groups, family, size, whole = self.groups, self.in_family, self.family_size, self.whole_family
        min_p = run["min_p"] if groups == 1 else run["min_p"].reshape(groups, -1)
        if whole:
            adjusted = benjamini_hochberg(min_p)
        else:
            adjusted = min_p.copy()
            if size:
                adjusted[..., family] = benjamini_hochberg(min_p[..., family])
        corrected = run["min_corrected_p"] = np.minimum(run["min_corrected_p"], adjusted.reshape(-1))
        in_family = corrected if whole else corrected.reshape(groups, -1)[:, family]
        if groups == 1:  # count_nonzero along an axis costs several times the plain count
            discoveries = [int(np.count_nonzero(in_family <= cfg.alpha))]
        else:
            discoveries = (in_family.reshape(groups, -1) <= cfg.alpha).sum(axis=1).tolist()
        family_factor = [max(d, 1) / size if size else 1.0 for d in discoveries]
        h = len(family)
        if whole:  # one level per experiment, its log in scalar math (bit-equal for any G)
            factor = None
            levels = [math.log(cfg.alpha * f) for f in family_factor]
            log_level = levels[0] if groups == 1 else np.repeat(levels, h)
        else:
            factor = np.where(np.tile(family, groups), np.repeat(family_factor, h), 1.0)
            log_level = np.log(cfg.alpha * factor)
        cor_lo, cor_hi = self._interval(scores, log_level)
        run["cor_lo"] = np.maximum(run["cor_lo"], cor_lo)
        run["cor_hi"] = np.minimum(run["cor_hi"], cor_hi)
        previous = self.rejected
        self.rejected = run["min_corrected_p"] < cfg.alpha
        # all valid: undefined and degenerate are one all-False array, never changed in place
        problem = scores.undefined if scores.all_valid else scores.undefined | scores.degenerate
        self.quality_flag, previous_quality = problem, self.quality_flag
        return Step(scores=scores, reset=reset, previous_rejected=previous, local_lo=local_lo, local_hi=local_hi,
                    previous_quality=previous_quality, family_factor=family_factor, factor=factor)
