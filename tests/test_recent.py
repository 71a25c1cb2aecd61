"""The web views' memory of recent results (stream_app/recent.py): bounded, oldest out first."""

from __future__ import annotations

import random

import orjson

from stream_app.recent import DeadLetters, DeadLetterTally, RecentAlerts, RecentResults


def rows(experiment: str, ts: float, n: int = 2, size: int = 100) -> list[bytes]:
    head = f'{{"experiment_id":"{experiment}","interval_timestamp":{ts},"pad":"'.encode()
    return [head + b"x" * (size - len(head) - 2) + b'"}' for _ in range(n)]


def held(recent: RecentResults, experiment: str) -> list[float]:
    return [interval.interval_timestamp for interval in recent.history(experiment)]


def test_history_is_oldest_first_and_since_keeps_only_later_intervals():
    recent = RecentResults(max_bytes=10**6, max_intervals=100)
    for ts in (0.0, 60.0, 120.0):
        recent.add("a", ts, rows("a", ts))
    assert held(recent, "a") == [0.0, 60.0, 120.0]
    assert [i.interval_timestamp for i in recent.history("a", since=60.0)] == [120.0]
    assert list(recent.history("a", since=120.0)) == [] and list(recent.history("nobody")) == []
    assert recent.latest("a") == tuple(rows("a", 120.0)) and recent.latest("nobody") == ()
    assert len(recent) == 1


def test_one_experiment_keeps_at_most_max_intervals():
    recent = RecentResults(max_bytes=10**6, max_intervals=3)
    for ts in range(6):
        recent.add("a", float(ts), rows("a", ts))
    recent.add("b", 0.0, rows("b", 0))
    assert held(recent, "a") == [3.0, 4.0, 5.0] and held(recent, "b") == [0.0]
    assert recent.intervals == 4 and recent.bytes == 4 * 200


def test_the_byte_bound_drops_the_oldest_intervals_of_all_experiments_first():
    recent = RecentResults(max_bytes=1000, max_intervals=100)  # room for 5 intervals of 200 B
    for ts in range(4):
        for experiment in ("a", "b"):
            recent.add(experiment, float(ts), rows(experiment, ts))
    assert recent.bytes <= 1000 and recent.intervals == 5
    assert held(recent, "a") == [2.0, 3.0] and held(recent, "b") == [1.0, 2.0, 3.0]
    assert recent.latest("a") == tuple(rows("a", 3)) and recent.latest("b") == tuple(rows("b", 3))


def test_an_experiment_that_stopped_is_forgotten_once_newer_results_fill_the_budget():
    recent = RecentResults(max_bytes=1000, max_intervals=100)
    recent.add("gone", 0.0, rows("gone", 0))
    for ts in range(4):
        recent.add("live", float(ts), rows("live", ts))
    assert recent.latest("gone") == tuple(rows("gone", 0)) and len(recent) == 2  # still within the budget
    recent.add("live", 4.0, rows("live", 4))
    assert recent.latest("gone") == () and list(recent.history("gone")) == [] and len(recent) == 1
    assert held(recent, "live") == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_the_interval_just_added_stays_even_when_larger_than_the_whole_budget():
    recent = RecentResults(max_bytes=150, max_intervals=100)
    recent.add("a", 0.0, rows("a", 0))  # 200 B
    assert held(recent, "a") == [0.0] and recent.latest("a") == tuple(rows("a", 0))
    recent.add("b", 0.0, rows("b", 0))
    assert held(recent, "a") == [] and recent.latest("a") == () and held(recent, "b") == [0.0]


def test_a_long_random_run_stays_within_both_bounds_and_matches_a_plain_model():
    generator = random.Random(7)
    recent = RecentResults(max_bytes=20_000, max_intervals=7)
    model: list[tuple[str, float, int]] = []  # every (experiment, ts, size) held, in arrival order
    clock = {e: 0.0 for e in "abcdefgh"}
    for _ in range(5000):
        experiment = generator.choice("abcdefgh") if generator.random() < 0.9 else "a"
        clock[experiment] += 60.0
        n = generator.randint(0, 4)
        payload = rows(experiment, clock[experiment], n, size=generator.randint(60, 400))
        recent.add(experiment, clock[experiment], payload)
        model.append((experiment, clock[experiment], sum(map(len, payload))))
        mine = [m for m in model if m[0] == experiment]
        if len(mine) > 7:
            model.remove(mine[0])
        while sum(m[2] for m in model) > 20_000 and len(model) > 1:
            model.pop(0)
        assert recent.bytes == sum(m[2] for m in model) <= 20_000
        assert recent.intervals == len(model)
        assert recent.latest(experiment) == tuple(payload)
    for experiment in "abcdefgh":
        assert held(recent, experiment) == [m[1] for m in model if m[0] == experiment]
    assert len(recent) == len({m[0] for m in model})
    # the arrival index does not grow with intervals already dropped
    assert len(recent._arrivals) <= 2 * recent.intervals + 1024


def alert(i: int, kind: str = "significance_reached") -> dict:
    return {"kind": kind, "interval_timestamp": 60.0 * i, "message": f"alert {i}"}


def test_alerts_keep_the_last_per_experiment_for_the_most_recently_alerted_experiments():
    alerts = RecentAlerts(experiments=2, per_experiment=3)
    alerts.add("a", (alert(i) for i in range(5)))
    assert alerts.get("a") == [alert(2), alert(3), alert(4)] and alerts.get("nobody") == []
    alerts.add("b", [alert(0)])
    alerts.add("a", [alert(5)])  # a alerted again: now b is the least recent
    alerts.add("c", [alert(0)])
    assert alerts.get("b") == [] and alerts.get("a") == [alert(3), alert(4), alert(5)] and len(alerts) == 2


def test_alerts_from_a_rebuild_meet_the_live_ones_in_time_order_without_twins():
    alerts = RecentAlerts(experiments=10, per_experiment=4)
    alerts.add("a", [alert(8), alert(9)])  # live, after the takeover
    alerts.add("a", [alert(i) for i in range(10)])  # the rebuild reads the topic: older ones, and the same two
    assert alerts.get("a") == [alert(6), alert(7), alert(8), alert(9)]  # the oldest went, not the newest
    alerts.add("a", [alert(9)])
    assert alerts.get("a") == [alert(6), alert(7), alert(8), alert(9)]


def test_an_interval_from_a_rebuild_is_inserted_in_order_and_one_emitted_again_replaces_its_twin():
    recent = RecentResults(max_bytes=10**6, max_intervals=3)
    recent.add("a", 120.0, rows("a", 120.0))  # live
    for ts in (0.0, 60.0, 120.0):  # rebuilt from the results topic, the live one included
        recent.add("a", ts, rows("a", ts, n=3))
    assert held(recent, "a") == [0.0, 60.0, 120.0] and recent.intervals == 3
    assert recent.latest("a") == tuple(rows("a", 120.0, n=3))
    assert recent.bytes == sum(len(r) for ts in (0.0, 60.0, 120.0) for r in rows("a", ts, n=3))
    recent.add("a", 30.0, rows("a", 30.0))  # over max_intervals: the oldest by time goes
    assert held(recent, "a") == [30.0, 60.0, 120.0]
    recent.forget("a")
    assert held(recent, "a") == [] and recent.bytes == 0 and recent.intervals == 0 and len(recent) == 0


def test_under_the_byte_bound_a_rebuilt_older_interval_goes_before_the_latest_one():
    recent = RecentResults(max_bytes=450, max_intervals=100)
    recent.add("a", 120.0, rows("a", 120.0))  # live: the latest
    recent.add("b", 0.0, rows("b", 0.0))
    recent.add("a", 60.0, rows("a", 60.0))  # rebuilt later, but older
    assert held(recent, "a") == [120.0] and held(recent, "b") == [0.0] and recent.bytes <= 450


def test_the_byte_bound_still_holds_with_intervals_arriving_out_of_order():
    rng = random.Random(3)
    recent = RecentResults(max_bytes=5_000, max_intervals=20)
    for _ in range(3000):
        experiment = rng.choice("abcd")
        ts = float(rng.randrange(50))
        recent.add(experiment, ts, rows(experiment, ts, n=rng.randrange(1, 4)))
        for e in "abcd":
            stamps = held(recent, e)
            assert stamps == sorted(set(stamps)) and len(stamps) <= 20
        assert recent.bytes <= max(5_000, 400) and recent.intervals == sum(len(held(recent, e)) for e in "abcd")
    assert len(recent._arrivals) <= 2 * recent.intervals + 1024


def test_dead_letters_are_counted_per_experiment_with_late_ones_and_the_latest_reasons():
    dead = DeadLetters(experiments=2, reasons=2)
    dead.add_message(b"a", orjson.dumps({"reason": "bad 1", "error": "invalid_input", "key": "a"}))
    dead.add_message(b"a", orjson.dumps({"reason": "observation too late: interval closed", "key": "a"}))
    dead.add_message(b"a", orjson.dumps({"reason": "bad 3", "key": "a"}))
    dead.add_message(None, orjson.dumps({"reason": "message has no key", "key": None}))
    dead.add_message(b"a", b"not json")
    assert dead.get("a") == DeadLetterTally(3, 1, ("observation too late: interval closed", "bad 3"))
    assert dead.get(None).count == 1 and dead.get("nobody") == DeadLetterTally(0, 0, ())
    dead.add_message(b"b", orjson.dumps({"reason": "x"}))
    dead.add_message(b"c", orjson.dumps({"reason": "y"}))  # over two experiments: the least recent (a) goes
    assert dead.get("a").count == 0 and dead.experiments_held() == ["b", "c"]
