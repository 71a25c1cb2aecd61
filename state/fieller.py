"""Relative confidence intervals by Fieller inversion of the difference-scale mixture test, and
the reconciliation of every reported interval with its p-value (state/METHODS.md sections F3-F5;
../shared/docs/METHODS.md section 10). Closed form, vectorised over hypotheses: no iteration.

The test of H0(r): mu_t - (1 + r) mu_c = 0 uses the statistic T(u) = m_t - u m_c (u = 1 + r),
its variance V(u) = a_t + u^2 a_c (a = v / N per arm) and mixing variance k V(u), with the one
k = tau_D^2 / V_D of the look (the mixing variance tau_D^2 = tau^2 m_c^2, or rho^2 N V_D for
n_star, over V_D = V(1)). Its log MLR is -ln(1 + k) / 2 + k z(u)^2 / (2 (1 + k)), z = T / sqrt(V),
so r is not rejected at level a exactly when z(u)^2 < c with

    c = (1 + k) / k * (2 ln(1/a) + ln(1 + k)) = (squared difference-scale half-width) / V_D,

a quadratic inequality in u: A u^2 - 2 B u + C < 0 with A = m_c^2 - c a_c, B = m_t m_c,
C = m_t^2 - c a_t (Fieller 1954). At u = 1 it is the test whose p-value is reported.
"""

from __future__ import annotations

import numpy as np

# The bound that stands for "just beside 0" when an interval must exclude 0 (see reconcile).
TINY = float(np.nextafter(0.0, 1.0))


def fieller_bounds(m_t, m_c, a_t, a_c, c) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_fieller_bounds` with NaN and infinite inputs quiet (they are meaningful here)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _fieller_bounds(m_t, m_c, a_t, a_c, c)


def _fieller_bounds(m_t, m_c, a_t, a_c, c) -> tuple[np.ndarray, np.ndarray]:
    """Lift bounds (r = u - 1) of {u : (m_t - u m_c)^2 < c (a_t + u^2 a_c)} (state/METHODS.md F3).

    - A > 0 (the control mean is distinguishable from 0 at this level): a bounded interval; it
      is never empty, since the discriminant B^2 - AC = c (a_c m_t^2 + a_t A) >= c a_t A >= 0.
    - A < 0 with a positive discriminant (or A = 0: one root): two rays. The ray holding the estimate m_t / m_c
      (never rejected: T = 0 there) is reported; the other one holds ratios of the opposite
      sign to the estimate, outside the parameter space of a metric of one sign.
    - otherwise (A <= 0 without two roots, or no valid inputs): the whole line (-inf, inf).
    Bounded roots (B -+ sqrt(disc)) / A; the finite roots of the rays by the cancellation-free
    pair q / A and C / q, q = B + sign(B) sqrt(disc).
    """
    big_a = m_c * m_c - c * a_c
    b = m_t * m_c
    # B^2 - AC rearranged as c (a_c m_t^2 + a_t A): no cancellation, and >= 0 whenever A > 0
    disc = c * (a_c * m_t * m_t + a_t * big_a)
    bounded = big_a > 0.0
    if np.count_nonzero(bounded) == bounded.size:  # the usual case after burn-in (cheaper than .all())
        root = np.sqrt(disc)
        # (B -+ root) / A. The cancellation in B - root (a root near u = 0, a lift near -100%)
        # costs absolute, not relative, precision of order 1e-16 * B / A on the lift scale:
        # immaterial. The same expressions on every path, so that a hypothesis' bounds do not
        # depend on the other hypotheses scored with it (update_many is bit-equal to update).
        return (b - root) / big_a - 1.0, (b + root) / big_a - 1.0
    root = np.sqrt(np.maximum(disc, 0.0))
    lo = (b - root) / big_a - 1.0
    hi = (b + root) / big_a - 1.0
    small_c = m_t * m_t - c * a_t
    # Rays: the finite roots by the cancellation-free pair q / A and C / q.
    q = b + np.copysign(root, b)
    linear = big_a == 0.0  # one root, C / (2B): a single ray
    safe_q = np.where(q == 0.0, 1.0, q)
    u2 = np.where(q == 0.0, b / big_a, small_c / safe_q)
    u1 = np.where(linear, u2, np.where(q == 0.0, u2, q / big_a))
    u_lo, u_hi = np.minimum(u1, u2), np.maximum(u1, u2)
    rays = ((big_a < 0.0) & (disc > 0.0)) | (linear & (q != 0.0))
    estimate_high = (m_t / m_c) >= u_hi
    ray_lo = np.where(rays & estimate_high, u_hi - 1.0, -np.inf)
    ray_hi = np.where(rays & ~estimate_high, u_lo - 1.0, np.inf)
    # NaN inputs (burn-in, empty arms) fail every comparison above and give (-inf, inf).
    return np.where(bounded, lo, ray_lo), np.where(bounded, hi, ray_hi)


def reconcile(lo, hi, excluded, estimate) -> tuple[np.ndarray, np.ndarray]:
    """Make 0 lie outside [lo, hi] exactly when ``excluded`` (its p-value is below its level),
    state/METHODS.md F5.

    Mathematically the two agree for local and running uncorrected intervals and this changes
    them only at rounding level; for the FDR-corrected interval (levels change over time) and
    for intervals replaced after an empty intersection it is the rule that defines the report:
    an interval that must exclude 0 but holds it is cut at 0 on the side of the estimate
    (``estimate`` > 0: positive side), keeping the part that the rejection claims; one that must hold 0 is widened
    to reach it (a superset: coverage can only grow). Never returns lower > upper.
    """
    holds_zero = (lo <= 0.0) & (hi >= 0.0)
    if not np.count_nonzero(holds_zero == excluded):  # the usual case: they agree everywhere
        return lo, hi
    cut = excluded & holds_zero
    widen = ~excluded & ~holds_zero
    positive = estimate > 0.0
    lo = np.where(widen, np.minimum(lo, 0.0), np.where(cut & positive, TINY, lo))
    hi = np.where(widen, np.maximum(hi, 0.0), np.where(cut & ~positive, -TINY, hi))
    # a cut of an interval touching 0 only at its end leaves a point next to 0, never lo > hi
    hi = np.where(cut & positive, np.maximum(hi, TINY), hi)
    lo = np.where(cut & ~positive, np.minimum(lo, -TINY), lo)
    return lo, hi
