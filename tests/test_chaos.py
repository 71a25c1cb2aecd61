"""Exactly-once effect through crashes, against the real broker: two workers on four partitions,
experiments published continuously, a random worker killed with SIGKILL again and again and
restarted, and every result compared with ``state.evaluate`` on the same data (tests/chaos.py).
bench/soak_chaos.py runs the same scenario longer, with more kills."""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos, worker_logs

pytestmark = pytest.mark.timeout(300)


def test_kill_9_of_random_workers_while_publishing_loses_and_double_counts_nothing(broker, tmp_path):
    report = run_chaos(broker, tmp_path, seed=17, kills=6, experiments=8, intervals=150, pause=0.3)
    print(report.summary())
    report.dump(tmp_path / "chaos-report.json")
    assert report.kills == 6
    detail = f"{report.summary()}\nmissing {report.missing[:5]}\nmismatched {report.mismatched[:5]}\n"
    assert not report.missing, detail + worker_logs(tmp_path)
    assert not report.mismatched, detail + worker_logs(tmp_path)  # nothing under- or double-counted
    assert not report.unexpected, detail
    assert report.deadletters == [], report.deadletters[:3]
