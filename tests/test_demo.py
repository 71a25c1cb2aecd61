"""`seqstream demo`, the README's main job: runs on a fresh machine with no Kafka configured,
shows significance and an SRM alert, finishes within 60 s, and leaves nothing running."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import COVID_CSV, COVID_METRICS

pytestmark = pytest.mark.timeout(120)


def demo_env(tmpdir: Path) -> dict[str, str]:
    """The embedded broker path (no KAFKA_BOOTSTRAP), the demo's temporary directory in
    ``tmpdir``: what it starts can be told from other demos running on this machine."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    env["TMPDIR"] = str(tmpdir)
    return env


def demo(tmpdir: Path, *args: str, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stream_app", "demo", *args], env=demo_env(tmpdir),
                          capture_output=True, text=True, timeout=90, **kwargs)
    return done, time.monotonic() - started


def _proc_file(pid: str, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def demo_workers(tmpdir: Path) -> set[int]:
    """PIDs of processes a demo run with ``demo_env(tmpdir)`` started: its worker (data dir
    ``<tmpdir>/seqstream-demo-.../data``) and its embedded broker (noida-db ``--data-dir
    <tmpdir>/seqstream-demo-.../broker``). Never this process, nor another test's demo."""
    prefix = os.path.join(str(tmpdir), "seqstream-demo-").encode()
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        argv = _proc_file(pid, "cmdline").split(b"\0")
        if (b"SEQSTREAM_DATADIR=" + prefix in _proc_file(pid, "environ")
                or any(arg.startswith(prefix) for arg in argv)):
            pids.add(int(pid))
    return pids


def gone(tmpdir: Path, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while demo_workers(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not demo_workers(tmpdir)


def test_demo_shows_significance_and_srm_within_a_minute(tmp_path):
    done, elapsed = demo(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert elapsed < 60
    out = done.stdout
    assert "ALERT significance_reached" in out and "ALERT srm: pricing-banner" in out
    summary = out.split("significant\n", 1)[1]  # the summary table below its header
    rows = {tuple(line.split()[:3]): line.split()[-1] for line in summary.splitlines()[1:] if line.count(" ") > 5}
    assert rows[("checkout-redesign", "conversion", "treatment_a")] == "yes"
    assert rows[("checkout-redesign", "support_tickets", "treatment_b")] == "no"
    assert "sample ratio mismatch: pricing-banner" in out
    assert gone(tmp_path)  # worker and broker stopped


def test_demo_json_replays_the_covid_csv(tmp_path):
    done, _ = demo(tmp_path, "--json", "--data", str(COVID_CSV), "--experiment", "covid", "--metrics", ",".join(COVID_METRICS))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 * 2 * 18 and {r["experiment_id"] for r in rows} == {"covid"}
    assert any(r["corrected_conf_interval_lower"] == "-inf" for r in rows)  # burn-in, as on the wire
    final = [r for r in rows if r["interval_timestamp"] == max(x["interval_timestamp"] for x in rows)]
    assert len(final) == 4 and all(r["rejected"] and r["lift_estimate"] < 0 for r in final)


def test_demo_in_a_pipe_stops_at_once_and_exits_0(tmp_path):
    """`seqstream demo --json | head -3`: the demo stops as soon as head leaves (not after its 20
    intervals and the wait for the rows nobody reads), reports no failure, exits 0, and leaves
    no worker or broker behind."""
    env = demo_env(tmp_path)
    script = f'{shlex.quote(sys.executable)} -m stream_app demo --json | head -3; echo "demo exit ${{PIPESTATUS[0]}}" >&2'
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(orjson.loads(line)["alpha"] == 0.1 for line in lines)
    assert done.stderr.splitlines()[-1] == "demo exit 0", done.stderr[-2000:]
    assert "result rows arrived" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert elapsed < 15, f"{elapsed:.1f} s"
    assert gone(tmp_path)


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
