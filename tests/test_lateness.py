"""Event time with allowed lateness on the real broker (docs/lateness.md, state.live).

One worker reads every scenario below, one message per batch (SEQSTREAM_BATCH_SIZE=1: emission is
judged after every message, the strictest case), each scenario an experiment of its own. Arrival
orders are drawn from seeded timelines: each row's arrival time is its interval index plus the
scenario's disorder, and the rows are published in arrival order. Every scenario's results are
compared with ``state.evaluate`` on the same rows: when everything arrives within the lateness,
no row is lost, none is dead-lettered, and the results are exactly evaluate's.
"""

from __future__ import annotations

import random

import orjson
import pytest

from state import evaluate
from state.simulate import ExperimentSpec, MetricSpec, simulate
from tests.stream_support import (collect, config_messages, distinct_results, isolated_settings, produce,
                                  request_for, result_key, start_worker, wait_until_held)

pytestmark = pytest.mark.timeout(240)

CONFIG = {"reference_variation_id": "control"}
OPTIONS = {"conv": {"is_binary": True}}
INTERVALS = 14


def _intervals(experiment: str, seed: int, variations=("control", "treatment")) -> list[list[dict]]:
    spec = ExperimentSpec(experiment, (MetricSpec("conv", 0.1, is_binary=True, lifts={"treatment": 0.1}),
                                       MetricSpec("revenue", 3.0, sd=5.0)),
                          variations=variations, units_per_interval=400, intervals=INTERVALS)
    return simulate(spec, seed)


def _by_arrival(timed: list[tuple[float, bytes]]) -> list[bytes]:
    return [value for _, value in sorted(timed, key=lambda pair: pair[0])]


def _duplicates_later(rng):
    """Every row once on time; a third of them again 1 to 10 intervals later."""
    data = _intervals("late-dups", 1)
    timed = []
    for i, rows in enumerate(data):
        for row in rows:
            timed.append((i + rng.random() * 0.1, orjson.dumps(row)))
            if rng.random() < 0.33:
                timed.append((i + rng.randint(1, 10) + 0.5, orjson.dumps(row)))
    return data, _by_arrival(timed)


def _shuffled_within_two_intervals(rng):
    data = _intervals("late-shuffle", 2)
    return data, _by_arrival([(i + rng.uniform(0, 2), orjson.dumps(row)) for i, rows in enumerate(data) for row in rows])


def _packed_swapped(rng):
    """One JSON array per interval; adjacent intervals swapped with probability 0.2."""
    data = _intervals("late-packed", 3)
    messages = [orjson.dumps(rows) for rows in data]
    i = 0
    while i < len(messages) - 1:
        if rng.random() < 0.2:
            messages[i], messages[i + 1] = messages[i + 1], messages[i]
            i += 1
        i += 1
    return data, messages


def _three_producers(rng):
    """A producer per variation, each row up to 0.3 intervals of jitter; the third lags 1.5."""
    data = _intervals("late-producers", 4, variations=("control", "treatment", "other"))
    lag = {"control": 0.0, "treatment": 0.15, "other": 1.5}
    return data, _by_arrival([(i + lag[row["variation_id"]] + rng.uniform(0, 0.3), orjson.dumps(row))
                              for i, rows in enumerate(data) for row in rows])


def _new_metric_and_variation(rng):
    """A metric from interval 4 on and a variation from interval 8 on, each after the known rows
    of its interval's message (the README tour's case: a metric the config does not name)."""
    data = _intervals("late-new-arms", 5, variations=("control", "treatment", "other"))
    kept = []
    for i, rows in enumerate(data):
        rows = [r for r in rows if (r["metric"] != "revenue" or i >= 4) and (r["variation_id"] != "other" or i >= 8)]
        rows.sort(key=lambda r: (r["metric"] == "revenue", r["variation_id"] == "other"))
        kept.append(rows)
    return kept, [orjson.dumps(rows) for rows in kept]


SCENARIOS = {"duplicates 1-10 intervals later": _duplicates_later,
             "shuffled within two intervals": _shuffled_within_two_intervals,
             "adjacent packed intervals swapped": _packed_swapped,
             "three producers, one lagging 1.5 intervals": _three_producers,
             "a new metric and a new variation mid-experiment": _new_metric_and_variation}

FUTURE = 4_102_444_800.0  # 2100-01-01


def _future_and_too_late():
    """In order, plus one row dated in 2100 mid-stream and one row of interval 0 (a new arm, so
    not a duplicate) after twelve more intervals were emitted: both dead-lettered, the rest exact."""
    data = _intervals("late-poison", 6)
    messages = []
    for i, rows in enumerate(data):
        messages += [orjson.dumps(r) for r in rows]
        if i == 5:
            messages.append(orjson.dumps(dict(rows[0], interval_timestamp=FUTURE)))
    stray = dict(data[0][0], variation_id="stray")
    messages.append(orjson.dumps(stray))
    return data, messages, stray


@pytest.fixture(scope="module")
def lateness_run(broker, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lateness")
    settings = isolated_settings(broker, tmp_path, batch_size=1, allowed_lateness=12)
    rng = random.Random(17)
    published, expected = {}, {}
    streams = []
    for name, scenario in SCENARIOS.items():
        data, messages = scenario(rng)
        experiment = data[0][0]["experiment_id"]
        published[name] = experiment
        streams.append([(experiment, m) for m in messages])
        expected[experiment] = _expected(experiment, data)
    data, messages, stray = _future_and_too_late()
    published["poison"] = "late-poison"
    streams.append([("late-poison", m) for m in messages])
    expected["late-poison"] = _expected("late-poison", data)
    produce(settings, [m for e in expected for m in config_messages(e, 1, CONFIG, OPTIONS)])
    worker = start_worker(settings, tmp_path)
    try:
        wait_until_held([worker], set(expected))
        # Scenarios interleaved message by message, each in its own arrival order.
        interleaved = [s[i] for i in range(max(map(len, streams))) for s in streams if i < len(s)]
        produce(settings, [("observations", e.encode(), m) for e, m in interleaved])
        want = {k for rows in expected.values() for k in rows}
        rows = collect(settings, "results", lambda out: want <= {result_key(r) for r in out}, timeout=120)
        deadletters = collect(settings, "deadletter", timeout=2)
    finally:
        worker.stop()
    return published, expected, rows, deadletters, stray


def _expected(experiment: str, data) -> dict:
    flat = [r for rows in data for r in rows]
    return distinct_results([r for rs in evaluate(request_for(flat, experiment, CONFIG, OPTIONS)) for r in rs])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rows_within_the_lateness_are_all_counted_and_results_equal_evaluate(lateness_run, scenario):
    published, expected, rows, deadletters, _ = lateness_run
    experiment = published[scenario]
    mine = [r for r in rows if r["experiment_id"] == experiment]
    assert [d for d in deadletters if d.get("key") == experiment or experiment in str(d.get("value"))] == []
    assert all("late_rows_folded" not in r for r in mine)  # nothing had to be folded
    assert distinct_results(mine) == expected[experiment]


def test_a_far_future_row_and_a_too_late_row_are_dead_lettered_and_change_nothing(lateness_run):
    published, expected, rows, deadletters, stray = lateness_run
    mine = [r for r in rows if r["experiment_id"] == "late-poison"]
    assert distinct_results(mine) == expected["late-poison"]
    reasons = [d["reason"] for d in deadletters if "late-poison" in str(d.get("value"))]
    assert len(reasons) == 2, reasons
    future = next(r for r in reasons if "wall clock" in r)
    assert repr(FUTURE) in future and "watermark stays" in future
    too_late = next(r for r in reasons if "too late" in r)
    assert f"interval {stray['interval_timestamp']!r}" in too_late and "watermark is at interval" in too_late
