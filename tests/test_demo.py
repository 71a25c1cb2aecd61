"""`seqstream demo`, the README's main job: runs on a fresh machine with no Kafka configured,
shows significance and an SRM alert, finishes within 60 s, and leaves nothing running."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time

import orjson
import pytest

from tests.conftest import COVID_CSV, COVID_METRICS

pytestmark = pytest.mark.timeout(120)


def demo(*args: str, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # the embedded broker path
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stream_app", "demo", *args], env=env, capture_output=True,
                          text=True, timeout=90, **kwargs)
    return done, time.monotonic() - started


DEMO_DIR_PREFIX = os.path.join(tempfile.gettempdir(), "seqstream-demo-").encode()


def _proc_file(pid: str, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def demo_workers() -> set[int]:
    """PIDs of processes a demo started: workers (their app ids start with seqstream-demo-) and
    embedded brokers (noida-db ``--data-dir <tmp>/seqstream-demo-.../broker``: an argument in the
    demo's temporary directory). Never this process, nor another user's."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        argv = _proc_file(pid, "cmdline").split(b"\0")
        if (b"SEQSTREAM_APP_ID=seqstream-demo-" in _proc_file(pid, "environ")
                or any(arg.startswith(DEMO_DIR_PREFIX) for arg in argv)):
            pids.add(int(pid))
    return pids


def test_demo_shows_significance_and_srm_within_a_minute():
    before = demo_workers()
    done, elapsed = demo()
    assert done.returncode == 0, done.stderr[-2000:]
    assert elapsed < 60
    out = done.stdout
    assert "ALERT significance_reached" in out and "ALERT srm: pricing-banner" in out
    summary = out.split("significant\n", 1)[1]  # the summary table below its header
    rows = {tuple(line.split()[:3]): line.split()[-1] for line in summary.splitlines()[1:] if line.count(" ") > 5}
    assert rows[("checkout-redesign", "conversion", "treatment_a")] == "yes"
    assert rows[("checkout-redesign", "support_tickets", "treatment_b")] == "no"
    assert "sample ratio mismatch: pricing-banner" in out
    time.sleep(1)
    assert demo_workers() <= before  # worker and broker stopped


def test_demo_json_replays_the_covid_csv():
    done, _ = demo("--json", "--data", str(COVID_CSV), "--experiment", "covid", "--metrics", ",".join(COVID_METRICS))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 * 2 * 18 and {r["experiment_id"] for r in rows} == {"covid"}
    assert any(r["corrected_conf_interval_lower"] == "-inf" for r in rows)  # burn-in, as on the wire
    final = [r for r in rows if r["interval_timestamp"] == max(x["interval_timestamp"] for x in rows)]
    assert len(final) == 4 and all(r["rejected"] and r["lift_estimate"] < 0 for r in final)


def test_demo_in_a_pipe_stops_at_once_and_exits_0():
    """`seqstream demo --json | head -3`: the demo stops as soon as head leaves (not after its 20
    intervals and the wait for the rows nobody reads), reports no failure, exits 0, and leaves
    no worker or broker behind."""
    before = demo_workers()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    script = f'{shlex.quote(sys.executable)} -m stream_app demo --json | head -3; echo "demo exit ${{PIPESTATUS[0]}}" >&2'
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(orjson.loads(line)["alpha"] == 0.1 for line in lines)
    assert done.stderr.splitlines()[-1] == "demo exit 0", done.stderr[-2000:]
    assert "result rows arrived" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert elapsed < 15, f"{elapsed:.1f} s"
    deadline = time.monotonic() + 20
    while demo_workers() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not demo_workers() - before


def test_replay_takes_metric_options_as_experiment_set_does(tmp_path):
    """`demo --data FILE --metric NAME:lower` marks the metric lower-is-better in the replayed
    config (the spec of `experiment set --metric`); a name the file does not have is an error."""
    from stream_app.console.cli import _parse_metric, build_parser
    from stream_app.console.demo import DemoInputError, replay_configs
    from stream_app.console.files import write_example_csv

    data = str(tmp_path / "covid.csv")
    write_example_csv(data)
    calls = "Customer support calls per visitor"
    args = build_parser().parse_args(["demo", "--data", data, "--experiment", "covid", "--metric", f"{calls}:lower"])
    options = dict(_parse_metric(m) for m in args.metric)
    configs, intervals = replay_configs(data, "covid", None, options)
    (experiment_options, metrics), = configs.values()
    assert metrics[calls] == {"is_binary": False, "lower_is_better": True}
    assert len(metrics) == 5 and all(m == {"is_binary": False} for name, m in metrics.items() if name != calls)
    assert len(intervals) == 18 and experiment_options["reference_variation_id"] == "control"
    with pytest.raises(DemoInputError, match="no metric 'Support calls'"):
        replay_configs(data, "covid", None, {"Support calls": {"lower_is_better": True}})
