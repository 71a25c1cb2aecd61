"""The reference service's covid request (shared/data/ses): issue 2's acceptance checks.

Expected values are computed here from the CSV itself (cumulative counts, sums, means and
population variances), never copied from any output.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from state import SES_COLUMNS, evaluate
from tests.conftest import COVID_METRICS, covid_request, covid_rows, naive_utc_seconds


@pytest.fixture(scope="module")
def response():
    return evaluate(covid_request())


def _cumulative(metric):
    """Cumulative (N, S, Q) per (variation, interval) straight from the CSV."""
    per = defaultdict(dict)
    for r in covid_rows():
        if r["metric_name"] == metric:
            per[r["variation_id"]][naive_utc_seconds(r["interval_timestamp"])] = np.array(
                [float(r["unit_count"]), float(r["unit_observation_sum"]), float(r["unit_observation_sum_of_squares"])]
            )
    out = {}
    for variation, by_ts in per.items():
        total = np.zeros(3)
        for ts in sorted(by_ts):
            total = total + by_ts[ts]
            out[variation, ts] = total
    return out


def test_shape_columns_and_order(response):
    assert len(response) == len(COVID_METRICS)
    for metric, rows in zip(COVID_METRICS, response):
        assert len(rows) == 2 * 18  # two treatments x 18 intervals; the reference emits no rows
        assert {r["variation_id"] for r in rows} == {"message_1", "message_2"}
        assert all(set(SES_COLUMNS) <= set(r) for r in rows)
        assert all(r["metric"] == metric for r in rows)
        keys = [(r["variation_id"], r["interval_timestamp"]) for r in rows]
        variations_in_order = list(dict.fromkeys(k[0] for k in keys))
        assert keys == sorted(keys, key=lambda k: (variations_in_order.index(k[0]), k[1]))


def test_counts_lifts_and_variances_follow_from_the_data(response):
    for metric, rows in zip(COVID_METRICS, response):
        cum = _cumulative(metric)
        for r in rows:
            n_t, s_t, q_t = cum[r["variation_id"], r["interval_timestamp"]]
            n_c, s_c, q_c = cum["control", r["interval_timestamp"]]
            assert r["treatment_unit_cumcount"] == n_t and r["control_unit_cumcount"] == n_c
            assert r["treatment_observation_cumsum"] == pytest.approx(s_t, rel=1e-12)
            v_t, v_c = q_t / n_t - (s_t / n_t) ** 2, q_c / n_c - (s_c / n_c) ** 2
            assert r["treatment_sample_variance"] == pytest.approx(v_t, abs=1e-9)
            assert r["total_sample_variance"] == pytest.approx(v_t + v_c, abs=1e-9)
            if n_t >= 100 and n_c >= 100:
                assert r["lift_estimate"] == pytest.approx((s_t / n_t) / (s_c / n_c) - 1, abs=1e-12)
            else:  # section 3 burn-in
                assert (r["lift_estimate"], r["standard_error"], r["local_p_value"]) == (0.0, np.inf, 1.0)
                assert r["corrected_conf_interval_lower"] == -np.inf and r["corrected_conf_interval_upper"] == np.inf


def test_no_stats_reset_and_final_rows_significant_and_negative(response):
    for rows in response:
        assert not any(r["stats_reset"] for r in rows)
        for variation in ("message_1", "message_2"):
            final = [r for r in rows if r["variation_id"] == variation][-1]
            assert final["rejected"] is True
            assert final["corrected_p_value"] < 1e-10
            assert final["lift_estimate"] < 0
            assert final["corrected_conf_interval_upper"] < 0  # the whole interval is negative
            assert final["corrected_conf_interval_lower"] < final["lift_estimate"] < final["corrected_conf_interval_upper"]


def test_running_quantities_are_monotone(response):
    for rows in response:
        for variation in ("message_1", "message_2"):
            series = [r for r in rows if r["variation_id"] == variation]
            for a, b in zip(series, series[1:]):
                assert b["corrected_p_value"] <= a["corrected_p_value"]
                assert b["corrected_conf_interval_lower"] >= a["corrected_conf_interval_lower"]
                assert b["corrected_conf_interval_upper"] <= a["corrected_conf_interval_upper"]
                assert b["uncorrected_conf_interval"] == b["uncorrected_conf_interval_upper"]


def test_fdr_factor_counts_the_family_of_four(response):
    first = [rows[0] for rows in response]
    assert all(r["fdr_correction_factor"] == 0.25 for r in first)  # burn-in: max(R, 1) / m = 1/4
    last = [rows[-1] for rows in response]
    assert all(r["fdr_correction_factor"] == 1.0 for r in last)  # all four rejected: 4/4
