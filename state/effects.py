"""Effect estimates and their variances (METHODS.md sections 2 and 6), vectorised over hypotheses.

Arm statistics arrive per epoch, shape (H, E, 3). With one epoch the estimate is the plain
difference of means. With several, each arm's mean is the epoch-stratified mean, weighted by the
epoch's units in both arms (section 6), so a change of allocation between epochs cannot create a
Simpson's-paradox effect; an epoch in which either arm has no units carries no weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arms import _arm_moments


@dataclass(frozen=True, slots=True)
class EffectEstimate:
    """Per-hypothesis estimates. ``statistic`` and ``variance`` are what the mixture test of
    H0 (no effect) is applied to: the reported effect and its variance for "ses" and "delta"
    (sections 2 and 4), the difference of means and V_D = v_t/N_t + v_c/N_c for "fieller"
    (section 10, state/METHODS.md), whose relative interval is then the Fieller inversion of that
    test built from the means and the variances of the means below."""

    effect: np.ndarray  # reported: relative lift m_t/m_c - 1 or difference m_t - m_c
    variance: np.ndarray  # V, the variance of ``statistic``
    mean_treatment: np.ndarray
    mean_control: np.ndarray
    variance_treatment: np.ndarray  # pooled over the segment's epochs (reported)
    variance_control: np.ndarray
    units_treatment: np.ndarray  # segment units, both arms
    units_control: np.ndarray
    statistic: np.ndarray  # tested against 0 (see above)
    var_mean_treatment: np.ndarray  # a_t = v_t / N_t (stratified over epochs)
    var_mean_control: np.ndarray  # a_c = v_c / N_c


def _stratified(stats: np.ndarray, weights: np.ndarray, is_binary: np.ndarray, ddof):
    """Stratified mean and the variance of that mean over the epoch axis."""
    mean_e, var_e = _arm_moments(stats, None if is_binary is None else is_binary[:, None],
                                 ddof[:, None] if isinstance(ddof, np.ndarray) else ddof)
    total = weights.sum(axis=1)
    share = weights / total[:, None]
    used = share > 0
    mean = np.where(used, share * mean_e, 0.0).sum(axis=1)
    var_of_mean = np.where(used, share * share * var_e / stats[..., 0], 0.0).sum(axis=1)
    empty = ~(total > 0)
    mean[empty] = np.nan
    var_of_mean[empty] = np.nan
    return mean, var_of_mean


def _null_variances(pooled, is_binary, ddof, var_t, var_c, vm_t, vm_c, single_epoch):
    """Variances of the arm means for the test of H0 (state/METHODS.md F2b): the pooled
    two-sample variance when it is at least Welch's, else each arm's own variance floored at the
    pooled one.

    An arm's own plug-in variance rises and falls with its mean on skewed data: a small arm that
    has not yet seen a large order has a small mean *and* a small variance, and D / sqrt(V_D)
    explodes (a 20:1 ramp-up on revenue falsely rejected in 20% of A/A experiments), as does an
    arm with no conversions yet (variance 0: a point interval at -100%). Under H0 both arms have
    one distribution, and both arms' data pooled estimate its variance v_0 from every unit. With
    v_0 (1/N_t + 1/N_c) >= Welch's a_t + a_c (always so at equal allocation) both arms take v_0:
    the pooled z-test, no more cautious than H0 requires. Otherwise (unequal allocation, the
    small arm the more variable) each arm keeps the larger of its own variance and v_0, so the
    test is never less cautious than Welch's and no arm has a zero variance beside a pooled
    positive one. Epoch-stratified variances of the mean are scaled by each arm's per-unit
    ratio."""
    both = pooled[0] + pooled[1]  # (H, 3): N, S, Q of both arms together
    _, var_pool = _arm_moments(both, is_binary, ddof)
    if single_epoch:  # v / N
        per_unit_t, per_unit_c = 1.0 / pooled[0, :, 0], 1.0 / pooled[1, :, 0]
    else:  # the stratified variance of the mean per unit of variance
        per_unit_t = np.where(var_t > 0, vm_t / var_t, 1.0 / pooled[0, :, 0])
        per_unit_c = np.where(var_c > 0, vm_c / var_c, 1.0 / pooled[1, :, 0])
    pool_t, pool_c = var_pool * per_unit_t, var_pool * per_unit_c
    pooled_test = pool_t + pool_c >= vm_t + vm_c
    if np.count_nonzero(pooled_test) == pooled_test.size:  # the usual case (always at equal allocation)
        return pool_t, pool_c
    floored_t = np.maximum(var_t, var_pool) * per_unit_t
    floored_c = np.maximum(var_c, var_pool) * per_unit_c
    return np.where(pooled_test, pool_t, floored_t), np.where(pooled_test, pool_c, floored_c)


def estimate_effects(
    stats: np.ndarray,
    is_binary: np.ndarray,
    relative: np.ndarray,
    variance_method: str = "fieller",
    ddof=0,
) -> EffectEstimate:
    """Effect and variance per hypothesis from per-epoch arm statistics of shape (H, E, 2, 3),
    axis 2 being (treatment, control). ``ddof`` is 0, 1 or one value per hypothesis. Empty arms
    give NaN, not warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _estimate_effects(stats, is_binary, relative, variance_method, ddof)


def _estimate_effects(stats, is_binary, relative, variance_method, ddof) -> EffectEstimate:
    """:func:`estimate_effects` without its errstate (the caller holds one)."""
    single_epoch = stats.shape[1] == 1
    treatment, control = stats[:, :, 0], stats[:, :, 1]
    # Both arms' moments in one call on a (2, H, 3) view: numpy's per-call overhead dominates
    # at streaming sizes.
    pooled = (stats[:, 0] if single_epoch else stats.sum(axis=1)).swapaxes(0, 1)
    means, variances = _arm_moments(pooled, is_binary, ddof)
    mean_t, mean_c = means
    var_t, var_c = variances
    n_t, n_c = pooled[0, :, 0], pooled[1, :, 0]
    if single_epoch:
        m_t, m_c = mean_t, mean_c
        vm_t, vm_c = var_t / n_t, var_c / n_c
    else:
        n_te, n_ce = treatment[..., 0], control[..., 0]
        weights = np.where((n_te > 0) & (n_ce > 0), n_te + n_ce, 0.0)
        m_t, vm_t = _stratified(treatment, weights, is_binary, ddof)
        m_c, vm_c = _stratified(control, weights, is_binary, ddof)

    all_relative = relative is True or bool(np.all(relative))
    if variance_method == "fieller":  # relative hypotheses only: absolute ones are section 2's test
        null_t, null_c = _null_variances(pooled, is_binary, ddof, var_t, var_c, vm_t, vm_c, single_epoch)
        if all_relative:
            vm_t, vm_c = null_t, null_c
        else:
            vm_t, vm_c = np.where(relative, null_t, vm_t), np.where(relative, null_c, vm_c)
    lift = m_t / m_c - 1.0
    difference = m_t - m_c
    v_difference = vm_t + vm_c  # V_D = v_t / N_t + v_c / N_c (sections 2 and 10)
    if variance_method == "fieller":
        # Section 10: every hypothesis is tested on the difference scale (no observed-ratio
        # shrinkage of the control's variance); only the reported effect and, later, the interval
        # (block.py, fieller.py) are relative.
        statistic, variance = difference, v_difference
        effect = lift if all_relative else np.where(relative, lift, difference)
    else:
        # Section 2: relative lift with the delta-method variance, optionally rescaled by
        # 4 m_t m_c / (m_t + m_c)^2 as the reference service does; absolute: difference of means.
        # V_delta = v_t / (N_t m_c^2) + m_t^2 v_c / (N_c m_c^4), factored to save passes.
        mc2 = m_c * m_c
        v_delta = (vm_t + m_t * m_t * vm_c / mc2) / mc2
        if variance_method == "ses":
            both = m_t + m_c
            v_delta = v_delta * (4.0 * m_t * m_c / (both * both))
        if all_relative:
            effect, variance = lift, v_delta
        else:
            effect = np.where(relative, lift, difference)
            variance = np.where(relative, v_delta, v_difference)
        statistic = effect
    return EffectEstimate(
        effect=effect,
        variance=variance,
        mean_treatment=m_t,
        mean_control=m_c,
        variance_treatment=var_t,
        variance_control=var_c,
        units_treatment=n_t,
        units_control=n_c,
        statistic=statistic,
        var_mean_treatment=vm_t,
        var_mean_control=vm_c,
    )
