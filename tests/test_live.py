"""Interval assembly, dedup, late rows, offsets and idle closing (state/live.py, no Kafka)."""

from __future__ import annotations

import pytest

from state import EngineConfig, MetricConfig, evaluate, parse_observation
from state.live import Duplicate, Lateness, LiveExperiment, Rejected

AT_ONCE = Lateness(delay=0)  # an incomplete interval is emitted as soon as a later one is open
from tests.conftest import COVID_METRICS, covid_request


def covid_observations():
    request = covid_request()
    rows = []
    for metric, name in zip(request["metrics"], COVID_METRICS):
        rows += [parse_observation(r, metric=name) for r in metric["data"]]
    return sorted(rows, key=lambda o: o.interval_timestamp)  # stable: metric order kept within an interval


def _keyed(rows):
    return {(r["metric"], r["variation_id"], r["interval_timestamp"]): repr(r) for r in rows}


def _run(live, observations, duplicate_each=False):
    out, duplicates = [], 0
    for obs in observations:
        for _ in range(2 if duplicate_each else 1):
            try:
                for result in live.offer(obs):
                    out += result.rows
            except Duplicate:
                duplicates += 1
    for result in live.close_all():
        out += result.rows
    return out, duplicates


def test_row_by_row_equals_evaluate_and_producer_duplicates_change_nothing():
    expected = _keyed(r for rows in evaluate(covid_request()) for r in rows)
    live = LiveExperiment.new("batch")
    # the reference service's method named: evaluate's default for the covid request
    live.configure(0, EngineConfig(reference_variation_id="control", use_stats_resets=True, variance_method="ses"),
                   {m: MetricConfig(name=m) for m in COVID_METRICS})
    rows, _ = _run(live, covid_observations())
    assert _keyed(rows) == expected
    again = LiveExperiment.new("batch")
    again.configure(0, EngineConfig(variance_method="ses"), {m: MetricConfig(name=m) for m in COVID_METRICS})
    rows, duplicates = _run(again, covid_observations(), duplicate_each=True)
    assert duplicates == len(covid_observations())
    assert _keyed(rows) == expected


def obs(ts, variation="t", n=10, s=5.0, q=5.0, metric="m"):
    return parse_observation({"metric": metric, "variation_id": variation, "interval_timestamp": ts,
                              "unit_count": n, "unit_observation_sum": s, "unit_observation_sum_of_squares": q})


def test_interval_is_emitted_when_complete_or_when_the_watermark_passes_it():
    live = LiveExperiment.new("e")
    assert live.offer(obs(0, "control")) == []
    assert live.offer(obs(0, "t")) == []  # arms unknown yet: cannot know it is complete
    assert live.offer(obs(60, "control")) == [] and live.offer(obs(120, "control")) == []  # within the delay
    closed = live.offer(obs(180, "control"))  # three later intervals open: the watermark passed it
    assert [r.interval_timestamp for r in closed] == [0] and sorted(live.open) == [60, 120, 180]
    closed = live.offer(obs(60, "t"))  # both known arms reported, next in line: complete
    assert [r.interval_timestamp for r in closed] == [60] and sorted(live.open) == [120, 180]


def test_a_complete_interval_waits_while_an_earlier_one_may_still_come():
    """Intervals come 60 s apart; 180 is complete but 120 has not been seen: 180 is not emitted
    on completeness (rows of 120 may be on their way), only once the watermark passes it."""
    live = LiveExperiment.new("e")
    for ts in (0, 60):
        for v in ("control", "t"):
            live.offer(obs(ts, v))
    live.close_all()
    assert live.offer(obs(180, "control")) == [] and live.offer(obs(180, "t")) == []
    closed = live.offer(obs(120, "t"))  # 120 arrives after 180: not late, not lost
    assert closed == [] and sorted(live.open) == [120, 180]
    closed = live.offer(obs(120, "control"))
    assert [r.interval_timestamp for r in closed] == [120, 180]


def test_closed_but_unscored_intervals_count_their_arms_as_expected():
    """Closing queues an interval for scoring (take); completeness of the next interval must see
    the arms the queued one brings, including a treatment's control, as scoring will register."""
    rows = [obs(0, "t"), obs(60, "t"), obs(60, "control"), obs(120, "t"), obs(120, "control")]
    scored_each_time, deferred = LiveExperiment.new("e"), LiveExperiment.new("e")
    closes = []
    for row in rows:
        scored_each_time.offer(row, policy=AT_ONCE)
        deferred.take(row, policy=AT_ONCE)
        deferred.advance(AT_ONCE)
        closes.append((scored_each_time.state.intervals, [ts for ts, _ in deferred.unscored]))
    # (t, 60) alone does not complete interval 60: (control) is expected although never seen yet
    assert closes == [(0, []), (1, [0.0]), (2, [0.0, 60.0]), (2, [0.0, 60.0]), (3, [0.0, 60.0, 120.0])]
    assert [r.interval_timestamp for r in deferred.score_closed()] == [0.0, 60.0, 120.0]
    assert deferred.to_bytes() == scored_each_time.to_bytes()


def test_the_cached_expected_arms_always_equal_a_rebuild():
    """expected_arms is kept up to date as intervals close and are scored, not rebuilt: after
    every row, score and config of a random run (arms appearing late, configs declaring arms), it
    equals the set rebuilt from scratch."""
    import copy
    import random

    from state.live import score_all

    rng = random.Random(11)
    live = LiveExperiment.new("e")
    checked = 0
    for step in range(600):
        ts = 60.0 * (step // 7)
        metric = rng.choice(["m1", "m2", "m3"][: 1 + step // 200])
        variation = rng.choice(["control", "t1", "t2", "t3"][: 2 + step // 150])
        try:
            live.take(obs(ts, variation, metric=metric), policy=AT_ONCE)
        except (Duplicate, Rejected):
            pass
        live.advance(AT_ONCE)
        if rng.random() < 0.3:
            score_all([live])
        if step in (250, 450):
            score_all([live])
            live.configure(step, EngineConfig(weights={"control": 1, "t1": 1, "t4": 1}), {"m4": MetricConfig()})
        rebuilt = copy.deepcopy(live)
        rebuilt._expected = None
        assert live.expected_arms() == rebuilt.expected_arms(), step
        checked += bool(live.unscored)
    assert checked > 50 and ("m4", "t4") in live.expected_arms()


def test_declared_arms_let_the_first_interval_close_on_completeness():
    live = LiveExperiment.new("e")
    live.configure(1, EngineConfig(weights={"control": 1, "t": 1}), {"m": MetricConfig()})
    live.offer(obs(0, "control"))
    assert [r.interval_timestamp for r in live.offer(obs(0, "t"))] == [0]


def test_conflicts_are_rejected_and_late_rows_folded_into_the_next_emission():
    policy = Lateness(delay=0, lateness=2)
    live = LiveExperiment.new("e")
    live.offer(obs(0, "control"), policy=policy)
    with pytest.raises(Rejected, match="conflicts"):
        live.offer(obs(0, "control", n=11), policy=policy)
    live.offer(obs(0, "t"), policy=policy)
    live.offer(obs(60, "control"), policy=policy)  # emits 0
    before = live.to_bytes()
    with pytest.raises(Duplicate):
        live.offer(obs(0, "t"), policy=policy)  # a producer duplicate of an applied row
    with pytest.raises(Rejected, match="conflicts with the row already received"):
        live.offer(obs(0, "t", s=6.0, q=6.0), policy=policy)
    assert live.to_bytes() == before  # neither changed anything
    assert live.offer(obs(0, "other", n=7), policy=policy) == []  # late, within the lateness: taken
    with pytest.raises(Duplicate):
        live.offer(obs(0, "other", n=7), policy=policy)  # and its copy is a duplicate
    (result,) = live.offer(obs(60, "t"), policy=policy)  # 60 complete: emitted with the late row
    assert result.interval_timestamp == 60 and live.folded == {60: {"m": 1}}
    counts = {r["variation_id"]: r["treatment_unit_cumcount"] for r in result.rows}
    assert counts == {"t": 20, "other": 7}  # the late row of interval 0 is counted at 60
    for ts in (120, 180):
        for v in ("control", "t", "other"):
            live.offer(obs(ts, v), policy=policy)
    with pytest.raises(Rejected, match=r"too late: interval 0.0 .*the watermark is at interval 180.0"):
        live.offer(obs(0, "another"), policy=policy)  # two intervals remembered: 120 and 180
    with pytest.raises(Rejected, match="after the wall clock"):
        live.take(obs(4e9, "t"), wall=1.7e9, policy=policy)
    assert live.watermark == 180


def test_offsets_recognise_redelivery():
    live = LiveExperiment.new("e")
    assert not live.already_processed("observations:0", 5)
    live.mark_processed("observations:0", 5)
    assert live.already_processed("observations:0", 5) and live.already_processed("observations:0", 3)
    assert not live.already_processed("observations:0", 6) and not live.already_processed("observations:1", 0)


def test_idle_timeout_closes_the_open_interval():
    live = LiveExperiment.new("e")
    live.offer(obs(0, "control"), now=100.0)
    assert live.close_if_idle(now=105.0, idle_timeout=10) is None
    assert live.close_if_idle(now=110.0, idle_timeout=10).interval_timestamp == 0


def test_old_config_versions_are_ignored_and_reference_cannot_change():
    live = LiveExperiment.new("e")
    assert live.configure(2, EngineConfig(alpha=0.05), {})
    assert not live.configure(1, EngineConfig(alpha=0.2), {})
    assert live.state.config.alpha == 0.05
    live.offer(obs(0, "control"))
    live.close()
    with pytest.raises(Rejected, match="reference variation cannot change"):
        live.configure(3, EngineConfig(reference_variation_id="t"), {})


def test_round_trip_mid_interval():
    live = LiveExperiment.new("e")
    for o in covid_observations()[:40]:
        try:
            live.offer(o, now=1.7e9)
        except Duplicate:
            pass
    live.mark_processed("observations:2", 41)
    restored = LiveExperiment.from_bytes(live.to_bytes())
    assert restored.to_bytes() == live.to_bytes()
    rest = covid_observations()[40:]
    assert repr(_run(live, rest)) == repr(_run(restored, rest))
    # bounded: a (metric, variation) costs far less than 2 KB
    assert len(live.to_bytes()) / 6 < 2048


def test_the_open_and_recent_intervals_share_one_key_per_arm():
    """Every message decodes its own copies of the names. The open interval and the recent closed
    intervals' digests hold one key object per arm instead of a copy per row, before and after a
    restore (per-row copies were a quarter of a cached experiment's memory)."""
    def row(ts, metric, variation):
        fresh = lambda name: "".join(list(name))  # a new str object, as a decoded message has  # noqa: E731
        return parse_observation({"metric": fresh(metric), "variation_id": fresh(variation), "interval_timestamp": ts,
                                  "unit_count": 100, "unit_observation_sum": 50, "unit_observation_sum_of_squares": 40})

    def keys_by_arm(live):
        keys = [k for closed in live.recent.values() for k in closed.keys] + [k for rows in live.open.values() for k in rows]
        by_arm: dict[tuple, set] = {}
        for k in keys:
            by_arm.setdefault(k, set()).add(id(k))
        return by_arm

    live = LiveExperiment.new("e")
    arms = [("m", "control"), ("m", "t"), ("n", "control"), ("n", "t")]
    for ts in (0, 60, 120):
        for metric, variation in arms:
            live.offer(row(ts, metric, variation))
    live.close_all()
    assert len(live.recent) == 3 and live.open_interval is None
    assert {arm: len(ids) for arm, ids in keys_by_arm(live).items()} == {arm: 1 for arm in arms}
    restored = LiveExperiment.from_bytes(live.to_bytes())
    for metric, variation in arms[:3]:
        restored.offer(row(180, metric, variation))  # the open interval, after a restore
    by_arm = keys_by_arm(restored)
    assert {arm: len(ids) for arm, ids in by_arm.items()} == {arm: 1 for arm in arms}
    (pending,) = restored.open.values()
    assert pending and all(id(k) in by_arm[k] for k in pending)
