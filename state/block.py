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
from .fieller import _fieller_bounds, reconcile

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
    # "fieller" change detection (state/METHODS.md F4): the (N, S, Q) of treatment and control
    # since the current window started (one row of 6 per hypothesis), its looks so far and its
    # number j within the segment
    "window": 0.0,
    "win_looks": 8.0,  # = WINDOW_LOOKS: "full", so that the first look starts window 1
    "win_index": 0.0,
}
# Trailing shape of a running quantity per hypothesis (others are one number per hypothesis).
RUNNING_SHAPE = {"window": (6,)}
# Looks per change-detection window: short enough that a window soon holds only data after a
# change, long enough to collect evidence; window j gets level reset_alpha / 2 * 6 / (pi^2 j^2).
WINDOW_LOOKS = 8
assert RUNNING_START["win_looks"] == WINDOW_LOOKS


class Scores(NamedTuple):
    """One look at every hypothesis (arrays over hypotheses), before the running quantities.
    (Named tuples: made several times per close, where a frozen dataclass's __init__ shows.)"""

    estimate: EffectEstimate
    valid: np.ndarray  # past burn-in, defined and testable
    all_valid: bool
    undefined: np.ndarray  # relative lift with a zero control mean
    degenerate: np.ndarray  # zero or non-finite effect variance
    theta: np.ndarray  # reported effect: 0 in burn-in, NaN when undefined
    centre: np.ndarray  # the tested statistic (theta, or D for "fieller"), 0 where not valid
    variance: np.ndarray  # of the tested statistic, 1 where not valid
    spread: np.ndarray  # V (V + tau^2) / tau^2, inf where invalid: (-inf, inf) intervals
    log_ratio: np.ndarray  # ln((V + tau^2) / V)
    log_mlr: np.ndarray
    local_p: np.ndarray
    # "fieller": (m_t, m_c, a_t, a_c) for the Fieller inversion, and which hypotheses use it
    # (None: all of them); None for the symmetric intervals of sections 2 and 4
    fieller: tuple | None
    fieller_mask: np.ndarray | None


class Step(NamedTuple):
    """What one look at a block produced, per hypothesis (flat, experiment-major) unless noted."""

    scores: Scores
    reset: np.ndarray
    previous_rejected: np.ndarray
    local_lo: np.ndarray
    local_hi: np.ndarray
    # reported running intervals (state/METHODS.md F5): the running intersections, or the local
    # interval where the intersection is empty, reconciled with their p-values
    uncorrected_lo: np.ndarray
    uncorrected_hi: np.ndarray
    corrected_lo: np.ndarray
    corrected_hi: np.ndarray
    effect_changed: np.ndarray  # a running intersection at alpha is empty (F4)
    previous_effect_changed: np.ndarray
    previous_quality: np.ndarray  # data-quality flags before this look
    family_factor: list[float]  # per experiment
    factor: np.ndarray | None  # per hypothesis; None when the whole family is every hypothesis


class Look(NamedTuple):
    """One look's p-values and local intervals, before any running quantity changes."""

    min_p: np.ndarray  # always-valid p after this look
    corrected: np.ndarray  # corrected p after this look
    family_factor: list[float]  # per experiment
    factor: np.ndarray | None  # per hypothesis; None when the whole family is every hypothesis
    lows: np.ndarray  # (3, H): local lower bounds at reset_alpha, alpha, the corrected level
    highs: np.ndarray


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
        ddof = layout._ddof
        self.ddof = np.tile(ddof, self.groups) if tile and isinstance(ddof, np.ndarray) else ddof
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
        windowed = self.config.variance_method == "fieller" and self.config.use_stats_resets
        if windowed:
            self._add_to_windows(arm_inc, None)
        scores = self._score()
        look = self._look(scores)
        reset = self._reset_check(look)
        if np.count_nonzero(reset):  # rare: restart those hypotheses and look again
            self.stats[reset] = 0.0
            self.stats[reset, -1] = arm_inc[reset]
            self.segment[reset] += 1
            for name, start in RUNNING_START.items():
                self.running[name][reset] = start
            if windowed:
                self._add_to_windows(arm_inc, reset)
            scores = self._score()
            look = self._look(scores)
            self._reset_check(look)
        return self._advance(scores, look, reset)

    def _add_to_windows(self, arm_inc: np.ndarray, only: np.ndarray | None) -> None:
        """Add this look's increments to each hypothesis' change-detection window (F4),
        starting a new window where the current one is full (a new segment's counts as full)."""
        run = self.running
        looks = run["win_looks"]
        start = looks >= WINDOW_LOOKS
        if only is not None:
            start &= only
        if np.count_nonzero(start):
            run["window"] = np.where(start[:, None], 0.0, run["window"])
            run["win_index"] = run["win_index"] + start
            looks = np.where(start, 0.0, looks)
        flat = arm_inc.reshape(len(arm_inc), 6)
        if only is None:
            run["window"] = run["window"] + flat
            run["win_looks"] = looks + 1.0
        else:
            run["window"] = np.where(only[:, None], run["window"] + flat, run["window"])
            run["win_looks"] = np.where(only, looks + 1.0, looks)

    def per_hypothesis(self, per_arm: np.ndarray, arms: np.ndarray) -> np.ndarray:
        """Rows of a (G, A, 3) per-arm array picked by each hypothesis' arm index (``arms``, (H,)
        or (H, 2)), stacked experiment-major as the block's hypotheses are."""
        if self.groups == 1:  # plain indexing of one experiment's (A, 3): the cheaper numpy path
            return per_arm[0][arms]
        picked = per_arm[:, arms]
        return picked.reshape(-1, *picked.shape[2:])

    def _score(self, stats: np.ndarray | None = None) -> Scores:
        """Scores of the segment's statistics, or of other per-hypothesis ``stats`` (H, E, 2, 3)."""
        cfg = self.config
        est = _estimate_effects(self.stats if stats is None else stats, self.binary_mask, self.relative_arg,
                                cfg.variance_method, self.ddof)
        warm = (est.units_treatment >= cfg.min_units) & (est.units_control >= cfg.min_units)
        defined = est.mean_control != 0  # m_c = 0: relative lift undefined (section 2)
        if self.relative_arg is not True:
            defined |= ~self.relative
        # V = 0 (both arms constant) or not finite: no test is possible, whatever the means say;
        # a plug-in zero variance never yields a rejection (state/METHODS.md F6)
        # ("fieller" floors each arm's variance at the pooled one: judge the arms' own)
        testable = (est.variance > 0) & (est.variance < np.inf) & (
            (est.variance_treatment > 0) | (est.variance_control > 0))
        valid = warm & defined & testable
        all_valid = np.count_nonzero(valid) == valid.size  # (count_nonzero: a fraction of .all()'s cost)
        if all_valid:  # the usual case after burn-in: no masking needed
            undefined = degenerate = np.zeros(len(valid), dtype=bool)
            theta = est.effect
            centre = est.statistic
            variance = est.variance
        else:
            undefined = warm & ~defined
            degenerate = warm & defined & ~testable
            variance = np.where(valid, est.variance, 1.0)
            theta = np.where(valid, est.effect, np.where(undefined, np.nan, 0.0))
            centre = np.where(valid, est.statistic, 0.0)
        test = self.test
        fieller = fieller_mask = None
        if cfg.variance_method == "fieller":
            # Section 10 / state/METHODS.md F2: mixing variance tau^2 m_c^2 on the difference
            # scale (tau^2 keeps its relative-lift meaning), or rho^2 N V_D for n_star;
            # absolute-effect hypotheses keep tau^2 on their own scale.
            m_c = est.mean_control
            if cfg.n_star is not None:
                tau2 = test.mixing_variance(variance, est.units_treatment + est.units_control)
            elif self.relative_arg is True:
                tau2 = cfg.tau2 * (m_c * m_c)
            else:
                tau2 = np.where(self.relative, cfg.tau2 * (m_c * m_c), cfg.tau2)
            if not all_valid:
                tau2 = np.where(valid, tau2, 1.0)
            fieller = (est.mean_treatment, m_c, est.var_mean_treatment, est.var_mean_control, self.binary_mask)
            fieller_mask = None if self.relative_arg is True else self.relative
        else:
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
                      log_mlr=log_mlr, local_p=local_p, fieller=fieller, fieller_mask=fieller_mask)

    @staticmethod
    def _interval(scores: Scores, log_level) -> tuple[np.ndarray, np.ndarray]:
        """Local confidence interval at the level whose log is given (a scalar, one per
        hypothesis, or a stack of levels of shape (L, H)); (-inf, inf) where there is no valid
        estimate. Symmetric (section 4) for "ses", "delta" and absolute effects; for "fieller"
        the Fieller inversion of the same test (state/METHODS.md F3), whose z^2 threshold c is
        the squared difference-scale half-width over V_D."""
        half2 = scores.spread * (scores.log_ratio - 2.0 * log_level)
        if scores.fieller is None:
            half = np.sqrt(half2)
            return scores.centre - half, scores.centre + half
        m_t, m_c, a_t, a_c, binary = scores.fieller
        lo, hi = _fieller_bounds(m_t, m_c, a_t, a_c, half2 / scores.variance)
        if binary is not None:
            # Rates are never negative, so neither is their ratio: a lift below -100% is not a
            # possible value (F3). Never above the upper bound, which holds the estimate >= -1.
            lo = np.where(binary, np.minimum(np.maximum(lo, -1.0), hi), lo)
        if not scores.all_valid:
            lo = np.where(scores.valid, lo, -np.inf)
            hi = np.where(scores.valid, hi, np.inf)
        if scores.fieller_mask is not None:  # absolute-effect hypotheses: symmetric on D
            half = np.sqrt(half2)
            lo = np.where(scores.fieller_mask, lo, scores.centre - half)
            hi = np.where(scores.fieller_mask, hi, scores.centre + half)
        return lo, hi

    def _look(self, scores: Scores) -> Look:
        """This look's p-values and local intervals, without changing any running quantity (so
        that a stats reset can discard it): always-valid p, BH and the FDR level (section 5), then
        the local intervals at reset_alpha, alpha and the corrected level in one stacked pass."""
        cfg, run = self.config, self.running
        min_p = np.minimum(run["min_p"], scores.local_p)
        # Section 5: BH over each experiment's family of always-valid p, then a running minimum
        # over time. One experiment takes numpy's cheaper one-dimensional path.
        groups, family, size, whole = self.groups, self.in_family, self.family_size, self.whole_family
        grouped = min_p if groups == 1 else min_p.reshape(groups, -1)
        if whole:
            adjusted = benjamini_hochberg(grouped)
        else:
            adjusted = grouped.copy()
            if size:
                adjusted[..., family] = benjamini_hochberg(grouped[..., family])
        corrected = np.minimum(run["min_corrected_p"], adjusted.reshape(-1))
        in_family = corrected if whole else corrected.reshape(groups, -1)[:, family]
        if groups == 1:  # count_nonzero along an axis costs several times the plain count
            discoveries = [int(np.count_nonzero(in_family <= cfg.alpha))]
        else:
            discoveries = (in_family.reshape(groups, -1) <= cfg.alpha).sum(axis=1).tolist()
        family_factor = [max(d, 1) / size if size else 1.0 for d in discoveries]
        h = len(family)
        n = len(min_p)
        # "fieller" splits reset_alpha between the segment's sequence and the windows' (F4)
        reset_level = cfg.reset_alpha / 2.0 if cfg.variance_method == "fieller" else cfg.reset_alpha
        log_reset, log_alpha = math.log(reset_level), math.log(cfg.alpha)
        if whole:  # one level per experiment, its log in scalar math (bit-equal for any G)
            factor = None
            levels = [math.log(cfg.alpha * f) for f in family_factor]
            if groups == 1:
                log_levels = np.array([[log_reset], [log_alpha], [levels[0]]])
            else:
                log_levels = np.stack([np.full(n, log_reset), np.full(n, log_alpha), np.repeat(levels, h)])
        else:
            factor = np.where(np.tile(family, groups), np.repeat(family_factor, h), 1.0)
            log_levels = np.stack([np.full(n, log_reset), np.full(n, log_alpha), np.log(cfg.alpha * factor)])
        lows, highs = self._interval(scores, log_levels)
        return Look(min_p, corrected, family_factor, factor, lows, highs)

    def _reset_check(self, look: Look) -> np.ndarray:
        """Section 6: under a constant effect the running intersection at reset_alpha stays
        non-empty with probability >= 1 - reset_alpha; an empty one means the effect changed.

        "fieller" (state/METHODS.md F4) also resets when the interval of the current window's
        data alone (level reset_alpha / 2 * 6 / (pi^2 j^2) for window j) is disjoint from the
        segment's running intersection (level reset_alpha / 2): both cover a constant effect at
        all times with probability >= 1 - reset_alpha (a union bound), so the false-reset rate is
        kept, while a window after a change holds only new data instead of a diluted mean. A
        window is scored once, at its last look (a confidence sequence may be inspected at any
        looks, and once per WINDOW_LOOKS keeps the cost of a look flat)."""
        run, cfg = self.running, self.config
        lo = np.maximum(run["reset_lo"], look.lows[0])
        hi = np.minimum(run["reset_hi"], look.highs[0])
        run["reset_lo"], run["reset_hi"] = lo, hi
        if not cfg.use_stats_resets:
            return np.zeros(len(lo), dtype=bool)
        reset = lo > hi
        if cfg.variance_method != "fieller":
            return reset
        full = run["win_looks"] >= WINDOW_LOOKS
        if not np.count_nonzero(full):  # 7 looks in 8: no window ends here
            return reset
        ended = full & ~reset
        scores = self._score(run["window"].reshape(-1, 1, 2, 3))
        j = np.maximum(run["win_index"], 1.0)
        w_lo, w_hi = self._interval(scores, np.log(cfg.reset_alpha / 2.0 * 6.0 / (math.pi**2 * j * j)))
        return reset | (ended & (np.maximum(lo, w_lo) > np.minimum(hi, w_hi)))

    def _advance(self, scores: Scores, look: Look, reset: np.ndarray) -> Step:
        cfg, run = self.config, self.running
        before = run["unc_lo"], run["unc_hi"], run["cor_lo"], run["cor_hi"]
        run["min_p"], run["min_corrected_p"] = look.min_p, look.corrected
        lows, highs = look.lows, look.highs  # rows: reset level (used), alpha, corrected level
        local_lo, local_hi, cor_lo, cor_hi = lows[1], highs[1], lows[2], highs[2]
        run["unc_lo"] = unc_lo = np.maximum(before[0], local_lo)
        run["unc_hi"] = unc_hi = np.minimum(before[1], local_hi)
        run["cor_lo"] = run_cor_lo = np.maximum(before[2], cor_lo)
        run["cor_hi"] = run_cor_hi = np.minimum(before[3], cor_hi)
        previous = self.rejected
        self.rejected = look.corrected < cfg.alpha

        # F4: an empty running intersection at alpha means the effect changed over time: the row
        # reports the latest local interval instead, flagged. F5: every reported interval (local,
        # running, corrected) excludes 0 exactly when its own p is below alpha: reconciled in one
        # pass over the look's (3, H) arrays, whose rows become (running, local, corrected)
        # (mathematically a no-op but for rounding and the cases F5 names).
        unc_empty = unc_lo > unc_hi
        cor_empty = run_cor_lo > run_cor_hi
        changed = unc_empty | cor_empty
        if np.count_nonzero(changed):
            lows[0], highs[0] = np.where(unc_empty, local_lo, unc_lo), np.where(unc_empty, local_hi, unc_hi)
            lows[2], highs[2] = np.where(cor_empty, cor_lo, run_cor_lo), np.where(cor_empty, cor_hi, run_cor_hi)
            previous_changed = ((before[0] > before[1]) | (before[2] > before[3])) & ~reset
        else:
            lows[0], highs[0], lows[2], highs[2] = unc_lo, unc_hi, run_cor_lo, run_cor_hi
            previous_changed = changed  # all False
        p_values = np.empty(lows.shape)
        p_values[0], p_values[1], p_values[2] = look.min_p, scores.local_p, look.corrected
        lows, highs = reconcile(lows, highs, p_values < cfg.alpha, scores.theta)

        # all valid: undefined and degenerate are one all-False array, never changed in place
        problem = scores.undefined if scores.all_valid else scores.undefined | scores.degenerate
        self.quality_flag, previous_quality = problem, self.quality_flag
        return Step(scores=scores, reset=reset, previous_rejected=previous, local_lo=lows[1], local_hi=highs[1],
                    uncorrected_lo=lows[0], uncorrected_hi=highs[0], corrected_lo=lows[2],
                    corrected_hi=highs[2], effect_changed=changed, previous_effect_changed=previous_changed,
                    previous_quality=previous_quality, family_factor=look.family_factor, factor=look.factor)
