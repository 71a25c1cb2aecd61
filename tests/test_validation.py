"""Bad input gets one typed error with an actionable message, and changes no state (issue 2)."""

from __future__ import annotations

import copy
import math

import pytest

from state import EngineConfig, InvalidInput, MetricConfig, evaluate, parse_observation, parse_timestamp
from tests.conftest import covid_request

GOOD = {"metric": "m", "variation_id": "t", "interval_timestamp": 1600000000, "unit_count": 10,
        "unit_observation_sum": 4.0, "unit_observation_sum_of_squares": 4.0}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unit_count": -1}, "whole number >= 0"),
        ({"unit_count": 2.5}, "whole number >= 0"),
        ({"unit_count": "10"}, "must be a number"),
        ({"unit_count": True}, "must be a number"),
        ({"unit_observation_sum": math.nan}, "must be finite"),
        ({"unit_observation_sum_of_squares": math.inf}, "must be finite"),
        ({"unit_observation_sum_of_squares": -1.0}, ">= 0"),
        ({"unit_observation_sum": 10.0, "unit_observation_sum_of_squares": 5.0}, "negative variance"),
        ({"unit_count": 0}, "unit_count is 0 but the sums are not"),
        ({"unit_count": 2.0**60}, "2\\*\\*53"),
        ({"unit_observation_sum": 10**400}, "out of range"),
        ({"interval_timestamp": 10**400}, "out of range"),
        ({"variation_id": ""}, "non-empty"),
        ({"interval_timestamp": "2020-09-14 11:21:00"}, "needs a zone"),
        ({"interval_timestamp": "yesterday"}, "not an ISO-8601"),
        ({"interval_timestamp": None}, "unix seconds"),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(change, message):
    with pytest.raises(InvalidInput, match=message):
        parse_observation({**GOOD, **change})


@pytest.mark.parametrize("field", ["unit_count", "unit_observation_sum", "unit_observation_sum_of_squares",
                                   "interval_timestamp", "variation_id", "metric"])
def test_missing_fields_are_named(field):
    row = dict(GOOD)
    del row[field]
    with pytest.raises(InvalidInput) as info:
        parse_observation(row)
    assert field in str(info.value)


def test_rounding_noise_in_the_variance_is_accepted_and_clamped():
    # S^2/N exceeds Q by 1 ulp-level noise: allowed (section 1), variance clamped to 0
    obs = parse_observation({**GOOD, "unit_count": 3, "unit_observation_sum": 0.3,
                             "unit_observation_sum_of_squares": 0.03 * (1 - 1e-12)})
    assert obs.unit_observation_sum_of_squares < 0.03


def test_binary_metric_sum_cannot_exceed_units():
    with pytest.raises(InvalidInput, match="0/1 metric"):
        parse_observation({**GOOD, "unit_observation_sum": 11, "unit_observation_sum_of_squares": 121}, is_binary=True)


def test_iso_timestamps_with_zone_are_unix_seconds():
    assert parse_timestamp("2020-09-14T11:21:00Z") == 1600082460.0
    assert parse_timestamp("2020-09-14T13:21:00+02:00") == 1600082460.0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["config"].update(alhpa=0.05), "unknown option"),
        (lambda r: r["config"].update(alpha=1.5), "strictly between 0 and 1"),
        (lambda r: r["config"].update(min_units=-3), "whole number"),
        (lambda r: r["config"].update(effect="ratio"), "must be one of"),
        (lambda r: r["metrics"][0]["config"].update(binary=True), "unknown option"),
        (lambda r: r.update(metricz=[]), "unknown request key"),
        (lambda r: r["metrics"][1]["data"].__setitem__(3, {**r["metrics"][1]["data"][3], "unit_count": -5}),
         r"metrics\[1\]\.data\[3\]"),
        (lambda r: r["metrics"][0]["data"].append(dict(r["metrics"][0]["data"][0])), "a second row"),
        (lambda r: r["config"].update(reference_variation_id="nobody"), "no data for the reference"),
        (lambda r: r.update(metrics=[]), "non-empty list"),
    ],
)
def test_bad_requests_are_rejected(mutate, message):
    request = copy.deepcopy(covid_request())
    mutate(request)
    with pytest.raises(InvalidInput, match=message):
        evaluate(request)


def test_config_round_trips_and_rejects_bad_weights():
    cfg = EngineConfig.from_dict({"alpha": 0.05, "n_star": 5000, "weights": {"a": 1, "b": 3}})
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    assert MetricConfig.from_dict(MetricConfig(is_binary=True).to_dict()) == MetricConfig(is_binary=True)
    with pytest.raises(InvalidInput, match="at least one weight"):
        EngineConfig.from_dict({"weights": {"a": 0}})
    with pytest.raises(InvalidInput, match="finite number >= 0"):
        EngineConfig.from_dict({"weights": {"a": -1}})
