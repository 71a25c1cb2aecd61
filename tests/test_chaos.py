"""Exactly-once effect through crashes, against the real broker: two workers on four partitions,
experiments published continuously, a random worker killed with SIGKILL again and again and
restarted, and every result compared with ``state.evaluate`` on the same data (tests/chaos.py).
bench/soak_chaos.py runs the same scenario longer, with more kills."""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos, worker_logs

pytestmark = pytest.mark.timeout(300)


# Open (issue 17): exact in every run on the issue-17 branch before main's issues 16/18/19 were
# merged in (718b115: five runs, seeds 17-19, 6-9 kills), but rows are lost in both runs after the
# merge (63f57fe: 68-84 result rows missing, 600-900 undercounted, and live members evicted by
# SessionExpiry). Kept running, not skipped, so it shows when that is fixed; non-strict so a pass
# does not fail the build either.
@pytest.mark.xfail(strict=False, reason="rows lost under kill -9 after merging main (issue 17, open); see the comment")
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
