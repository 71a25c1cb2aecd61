"""Benjamini-Hochberg adjustment over always-valid p-values (METHODS.md section 5)."""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values along the last axis: adj_(k) = min_{j >= k} (m / j) p_(j), capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.shape[-1]
    if m == 0:
        return p.copy()
    if p.ndim == 1:  # the streaming case: plain indexing is several times cheaper
        order = np.argsort(p, kind="stable")
        ranked = p[order] * (m / np.arange(1, m + 1))
        adjusted = np.empty_like(p)
        adjusted[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
        return adjusted
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m / np.arange(1, m + 1))
    adjusted_sorted = np.minimum(np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1], 1.0)
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=-1)
    return adjusted
